/**
 * The proxy's name lookups.
 *
 * The system resolver (`dns.lookup`: getaddrinfo, so /etc/hosts and search
 * domains count as they do for the sandbox's own processes) runs each lookup
 * on one of libuv's threads, the threads the supervisor's file I/O (exec
 * spools, SFTP) also runs on. `NameCache` in front of it:
 *
 * - keeps answers `ttlMs` (default 10 s; getaddrinfo gives no TTL), so a
 *   burst of connections to one host, a package manager's downloads say,
 *   costs one lookup and each connection after the first is decided at once;
 * - shares one lookup among the intents that need a name at the same time;
 * - runs at most `maxInFlight` lookups at once (default 2) and queues the
 *   rest, so a resolver that does not answer holds two threads, not all of
 *   them;
 * - fails a lookup not answered within `timeoutMs` with ETIMEOUT (its thread
 *   and slot stay busy until getaddrinfo returns; an answer that comes later
 *   is still kept).
 *
 * Failures are not kept. Every intent still checks every address it is
 * given and connects to one of those (no second lookup between the check and
 * the connect), whether the answer was kept or fresh.
 */
import { lookup as dnsLookup } from 'node:dns/promises';

/** All addresses of a name, as text. */
export type Lookup = (host: string) => Promise<string[]>;

export const systemLookup: Lookup = (host) =>
  dnsLookup(host, { all: true, verbatim: true }).then((r) => r.map((a) => a.address));

export interface NameCacheOptions {
  lookup?: Lookup;
  /** How long an answer is kept; 0 = not kept (lookups are still shared and limited). Default 10000. */
  ttlMs?: number;
  /** Lookups running at once. Default 2. */
  maxInFlight?: number;
  /** Default 10000. */
  timeoutMs?: number;
  /** Names kept at most; the oldest go first. Default 1024. */
  maxEntries?: number;
}

interface Kept {
  addrs: string[];
  until: number;
}

export class NameCache {
  readonly #lookup: Lookup;
  readonly #ttlMs: number;
  readonly #maxInFlight: number;
  readonly #timeoutMs: number;
  readonly #maxEntries: number;
  readonly #kept = new Map<string, Kept>();
  readonly #pending = new Map<string, Promise<string[]>>();
  readonly #queue: Array<() => void> = [];
  #running = 0;

  constructor(opts: NameCacheOptions = {}) {
    this.#lookup = opts.lookup ?? systemLookup;
    this.#ttlMs = opts.ttlMs ?? 10_000;
    this.#maxInFlight = Math.max(1, opts.maxInFlight ?? 2);
    this.#timeoutMs = opts.timeoutMs ?? 10_000;
    this.#maxEntries = Math.max(1, opts.maxEntries ?? 1024);
  }

  /** The addresses of `host`: at once when kept, else the lookup under way for it or a new one. */
  resolve(host: string): string[] | Promise<string[]> {
    const kept = this.#kept.get(host);
    if (kept) {
      if (kept.until > Date.now()) return kept.addrs;
      this.#kept.delete(host);
    }
    let p = this.#pending.get(host);
    if (!p) {
      p = this.#start(host);
      this.#pending.set(host, p);
    }
    return p;
  }

  /**
   * A connection to `address`, one of `host`'s kept addresses, worked where
   * the ones before it did not answer: list it first from now on (RFC 8305
   * 4), so later connections do not wait for those again.
   */
  prefer(host: string, address: string): void {
    const kept = this.#kept.get(host);
    if (!kept) return;
    const i = kept.addrs.indexOf(address);
    if (i <= 0) return;
    kept.addrs = [address, ...kept.addrs.slice(0, i), ...kept.addrs.slice(i + 1)];
  }

  /** Lookups running now (for tests and logs). */
  get running(): number {
    return this.#running;
  }

  #start(host: string): Promise<string[]> {
    return new Promise<string[]>((resolve, reject) => {
      let settled = false;
      const settle = (): boolean => {
        if (settled) return false;
        settled = true;
        clearTimeout(timer);
        this.#pending.delete(host);
        return true;
      };
      const timer = setTimeout(() => {
        if (settle()) reject(Object.assign(new Error(`lookup of ${host} timed out`), { code: 'ETIMEOUT' }));
      }, this.#timeoutMs);
      timer.unref();
      const run = (): void => {
        // Timed out while queued: nobody waits for it.
        if (settled) return this.#next();
        this.#running++;
        let lookup: Promise<string[]>;
        try {
          lookup = this.#lookup(host);
        } catch (err) {
          lookup = Promise.reject(err);
        }
        lookup.then(
          (addrs) => {
            this.#running--;
            this.#keep(host, addrs);
            if (settle()) resolve(addrs);
            this.#next();
          },
          (err: unknown) => {
            this.#running--;
            if (settle()) reject(err);
            this.#next();
          },
        );
      };
      if (this.#running < this.#maxInFlight) run();
      else this.#queue.push(run);
    });
  }

  #next(): void {
    if (this.#running < this.#maxInFlight) this.#queue.shift()?.();
  }

  #keep(host: string, addrs: string[]): void {
    if (this.#ttlMs <= 0 || addrs.length === 0) return;
    this.#kept.delete(host);
    this.#kept.set(host, { addrs, until: Date.now() + this.#ttlMs });
    if (this.#kept.size > this.#maxEntries) {
      const oldest = this.#kept.keys().next();
      if (!oldest.done) this.#kept.delete(oldest.value);
    }
  }
}

import { randomBytes } from 'node:crypto';
import type { WebSocket } from 'ws';
import type { Config } from '../config.js';
import { OpenShellError } from '../errors.js';
import type { Logger } from '../log.js';
import type { RelayOpenResultMessage, RelayTarget } from '../protocol/control.js';
import type { SupervisorSession } from './control.js';
import { keepAlive, silentForMs } from './heartbeat.js';
import type { SessionRegistry } from './sessions.js';

export const PENDING_TTL_MS = 10_000;
export const REAP_INTERVAL_MS = 30_000;
export const MAX_PENDING_TOTAL = 256;
export const MAX_PENDING_PER_SANDBOX = 32;
/** Exec relays kept open between execs, per sandbox and in total (relay reuse). */
export const MAX_IDLE_PER_SANDBOX = 8;
export const MAX_IDLE_TOTAL = 1024;
/** An idle exec relay unused this long is closed (by the reaper, so within twice this). */
export const IDLE_TTL_MS = 30_000;
/** How long an open waits for a supervisor session, by target (DESIGN.md). */
export const SESSION_WAIT_MS: Record<RelayTarget, number> = { exec: 15_000, ssh: 30_000 };

interface Pending {
  channelId: string;
  sandboxId: string;
  target: RelayTarget;
  createdAt: number;
  resolve: (ws: WebSocket) => void;
  reject: (err: Error) => void;
}

export interface RelayMetrics {
  opened(target: RelayTarget, result: string): void;
  bytes?(direction: 'from_sandbox' | 'to_sandbox', n: number): void;
}

export interface RelayBrokerOptions {
  sessions: SessionRegistry<SupervisorSession>;
  config: Pick<Config, 'keepaliveIntervalMs' | 'keepaliveTimeoutMs'>;
  log: Logger;
  metrics?: RelayMetrics;
  pendingTtlMs?: number;
  sessionWaitMs?: Partial<Record<RelayTarget, number>>;
}

/**
 * Brokers relays: asks a sandbox's supervisor (over its control session) to
 * dial a relay WebSocket back, and hands the claimed socket to the caller.
 * Pending relays are capped (256 total, 32 per sandbox) and expire after 10 s.
 * Every open relay is tied to the session that opened it and ends with it.
 */
export class RelayBroker {
  readonly #o: RelayBrokerOptions;
  readonly #log: Logger;
  readonly #pending = new Map<string, Pending>();
  readonly #pendingBySandbox = new Map<string, number>();
  readonly #open = new Set<WebSocket>();
  readonly #openByChannel = new Map<string, { ws: WebSocket; sandboxId: string }>();
  /** The session each open relay rides. */
  readonly #sessionOf = new WeakMap<WebSocket, SupervisorSession>();
  /** Exec relays between execs, by sandbox, most recently used last. */
  readonly #idle = new Map<string, { ws: WebSocket; since: number }[]>();
  #idleTotal = 0;
  readonly #reaper: NodeJS.Timeout;
  #closed = false;
  #ttlMs: number;

  constructor(opts: RelayBrokerOptions) {
    this.#o = opts;
    this.#ttlMs = opts.pendingTtlMs ?? PENDING_TTL_MS;
    this.#log = opts.log.child({ component: 'relay' });
    this.#reaper = setInterval(() => this.reap(), REAP_INTERVAL_MS).unref();
  }

  get pendingCount(): number {
    return this.#pending.size;
  }

  get openCount(): number {
    return this.#open.size;
  }

  /** Exec relays open and waiting for their next exec. */
  get idleCount(): number {
    let n = 0;
    for (const list of this.#idle.values()) for (const { ws } of list) if (ws.readyState === ws.OPEN) n++;
    return n;
  }

  /**
   * An exec relay for `sandboxId`: an idle one of its current session that
   * heard from its peer within a ping period, else a new one (`open`).
   */
  async acquireExec(sandboxId: string, signal?: AbortSignal): Promise<WebSocket> {
    const list = this.#idle.get(sandboxId);
    if (list) {
      const freshMs = this.#o.config.keepaliveIntervalMs + this.#o.config.keepaliveTimeoutMs / 4;
      while (list.length > 0) {
        const { ws } = list.pop()!;
        this.#idleTotal--;
        const session = this.#sessionOf.get(ws);
        if (ws.readyState === ws.OPEN && session && !session.signal.aborted && silentForMs(ws) <= freshMs) {
          if (list.length === 0) this.#idle.delete(sandboxId);
          return ws;
        }
        if (ws.readyState === ws.OPEN) ws.close(1000, 'stale');
      }
      this.#idle.delete(sandboxId);
    }
    return this.open(sandboxId, 'exec', signal);
  }

  /**
   * Takes back an exec relay whose exec ended and whose `release` op was sent.
   * Closed when it is not healthy, its session is gone, or the idle caps are reached.
   */
  releaseExec(sandboxId: string, ws: WebSocket): void {
    const session = this.#sessionOf.get(ws);
    if (ws.readyState !== ws.OPEN) return;
    if (this.#closed || !session || session.signal.aborted || session.sandboxId !== sandboxId || this.#idleTotal >= MAX_IDLE_TOTAL) {
      ws.close(1000, 'done');
      return;
    }
    let list = this.#idle.get(sandboxId);
    if (!list) {
      list = [];
      this.#idle.set(sandboxId, list);
    }
    if (list.length >= MAX_IDLE_PER_SANDBOX) {
      ws.close(1000, 'done');
      return;
    }
    list.push({ ws, since: Date.now() });
    this.#idleTotal++;
  }

  /** Channel ids pending for a sandbox (diagnostics and tests). */
  pendingChannels(sandboxId: string): string[] {
    return [...this.#pending.values()].filter((p) => p.sandboxId === sandboxId).map((p) => p.channelId);
  }

  /** Changes how long a relay may stay unclaimed (tests shorten it). */
  setPendingTtlMs(ms: number): void {
    this.#ttlMs = ms;
  }

  pendingFor(sandboxId: string): number {
    return this.#pendingBySandbox.get(sandboxId) ?? 0;
  }

  /**
   * Opens a relay to `sandboxId`'s supervisor. Waits for a session (exec
   * 15 s, ssh 30 s, backoff 100 ms → 2 s), then for the supervisor to dial
   * back (10 s). Rejects with SESSION_UNAVAILABLE, RESOURCE_EXHAUSTED or RELAY_LOST.
   */
  async open(sandboxId: string, target: RelayTarget, signal?: AbortSignal): Promise<WebSocket> {
    if (this.#closed) throw new OpenShellError('SESSION_UNAVAILABLE', 'gateway is shutting down');
    const waitMs = this.#o.sessionWaitMs?.[target] ?? SESSION_WAIT_MS[target];
    const session = await this.#o.sessions.waitForSession(sandboxId, waitMs, signal);
    if (signal?.aborted) throw new OpenShellError('RELAY_LOST', 'caller went away');
    if (!session) {
      this.#o.metrics?.opened(target, 'session_unavailable');
      throw new OpenShellError('SESSION_UNAVAILABLE', `sandbox has had no supervisor session for ${waitMs / 1000} s`);
    }
    // Check and insert in one synchronous step: no await between them, so a burst cannot overshoot the caps.
    const perSandbox = this.pendingFor(sandboxId);
    if (this.#pending.size >= MAX_PENDING_TOTAL || perSandbox >= MAX_PENDING_PER_SANDBOX) {
      this.#o.metrics?.opened(target, 'resource_exhausted');
      throw new OpenShellError(
        'RESOURCE_EXHAUSTED',
        perSandbox >= MAX_PENDING_PER_SANDBOX
          ? `too many pending relays for this sandbox (max ${MAX_PENDING_PER_SANDBOX})`
          : `too many pending relays (max ${MAX_PENDING_TOTAL})`,
      );
    }
    const channelId = `ch_${randomBytes(12).toString('hex')}`;
    const ws = await new Promise<WebSocket>((resolve, reject) => {
      const ttl = this.#ttlMs;
      const cleanup = () => {
        clearTimeout(timer);
        session.signal.removeEventListener('abort', onSessionEnd);
        signal?.removeEventListener('abort', onCallerGone);
      };
      const entry: Pending = {
        channelId,
        sandboxId,
        target,
        createdAt: Date.now(),
        resolve: (claimed) => {
          cleanup();
          resolve(claimed);
        },
        reject: (err) => {
          cleanup();
          reject(err);
        },
      };
      const fail = (code: 'RELAY_LOST' | 'SESSION_UNAVAILABLE', message: string) => {
        if (this.#take(channelId)) entry.reject(new OpenShellError(code, message));
      };
      const timer = setTimeout(() => fail('SESSION_UNAVAILABLE', `the supervisor did not claim the relay within ${ttl} ms`), ttl);
      timer.unref();
      const onSessionEnd = () => fail('RELAY_LOST', 'the supervisor session ended before the relay was claimed');
      const onCallerGone = () => {
        fail('RELAY_LOST', 'caller went away');
        session.send({ type: 'relayClose', channelId, reason: 'caller went away' });
      };
      session.signal.addEventListener('abort', onSessionEnd, { once: true });
      signal?.addEventListener('abort', onCallerGone, { once: true });
      this.#pending.set(channelId, entry);
      this.#pendingBySandbox.set(sandboxId, perSandbox + 1);
      if (!session.send({ type: 'relayOpen', channelId, target })) onSessionEnd();
    }).catch((err: unknown) => {
      this.#o.metrics?.opened(target, (err as OpenShellError).code?.toLowerCase() ?? 'error');
      throw err;
    });
    this.#o.metrics?.opened(target, 'ok');
    this.#track(ws, session, channelId, target);
    return ws;
  }

  /** Whether a pending relay `channelId` exists and belongs to `sandboxId` (checked before upgrading). */
  canClaim(channelId: string, sandboxId: string): 'ok' | 'not_found' | 'forbidden' {
    const entry = this.#pending.get(channelId);
    if (!entry) return 'not_found';
    return entry.sandboxId === sandboxId ? 'ok' : 'forbidden';
  }

  /** Hands the supervisor's relay WebSocket to the waiting opener. */
  claim(channelId: string, sandboxId: string, ws: WebSocket): boolean {
    const entry = this.#pending.get(channelId);
    if (!entry || entry.sandboxId !== sandboxId) return false;
    this.#take(channelId);
    entry.resolve(ws);
    return true;
  }

  /** The supervisor's answer to `relayOpen`; a refusal fails the opener at once. */
  onOpenResult(session: SupervisorSession, message: RelayOpenResultMessage): void {
    if (message.ok) return;
    const entry = this.#pending.get(message.channelId);
    if (!entry || entry.sandboxId !== session.sandboxId) return;
    this.#take(message.channelId);
    entry.reject(new OpenShellError('RELAY_LOST', `supervisor refused the relay: ${String(message.error ?? 'unknown')}`));
  }

  /** `relayClose` from a supervisor: fails a pending open, or ends an open relay, of its own sandbox only. */
  onRelayClose(session: SupervisorSession, channelId: string, reason: string): void {
    const entry = this.#pending.get(channelId);
    if (entry && entry.sandboxId === session.sandboxId) {
      this.#take(channelId);
      entry.reject(new OpenShellError('RELAY_LOST', `supervisor closed the relay: ${String(reason).slice(0, 200)}`));
      return;
    }
    const open = this.#openByChannel.get(channelId);
    if (open && open.sandboxId === session.sandboxId) open.ws.terminate();
  }

  /** Expires pending relays older than the TTL (a backstop to each opener's own timer), and closes idle exec relays unused for IDLE_TTL_MS or dead. */
  reap(now = Date.now()): number {
    for (const [sandboxId, list] of this.#idle) {
      const keep = list.filter(({ ws, since }) => {
        if (ws.readyState === ws.OPEN && now - since < IDLE_TTL_MS) return true;
        if (ws.readyState === ws.OPEN) ws.close(1000, 'idle');
        return false;
      });
      this.#idleTotal -= list.length - keep.length;
      if (keep.length) this.#idle.set(sandboxId, keep);
      else this.#idle.delete(sandboxId);
    }
    const ttl = this.#ttlMs;
    let reaped = 0;
    for (const entry of [...this.#pending.values()]) {
      if (now - entry.createdAt < ttl) continue;
      this.#take(entry.channelId);
      entry.reject(new OpenShellError('SESSION_UNAVAILABLE', 'relay expired unclaimed'));
      reaped++;
    }
    return reaped;
  }

  /** True once `close()` ran: the gateway is shutting down and opens no more relays. */
  get closed(): boolean {
    return this.#closed;
  }

  close(): void {
    this.#closed = true;
    clearInterval(this.#reaper);
    for (const entry of [...this.#pending.values()]) {
      this.#take(entry.channelId);
      entry.reject(new OpenShellError('SESSION_UNAVAILABLE', 'gateway is shutting down'));
    }
    for (const ws of this.#open) ws.terminate();
    this.#idle.clear();
    this.#idleTotal = 0;
  }

  #take(channelId: string): Pending | undefined {
    const entry = this.#pending.get(channelId);
    if (!entry) return undefined;
    this.#pending.delete(channelId);
    const left = (this.#pendingBySandbox.get(entry.sandboxId) ?? 1) - 1;
    if (left <= 0) this.#pendingBySandbox.delete(entry.sandboxId);
    else this.#pendingBySandbox.set(entry.sandboxId, left);
    return entry;
  }

  #track(ws: WebSocket, session: SupervisorSession, channelId: string, target: RelayTarget): void {
    this.#open.add(ws);
    this.#openByChannel.set(channelId, { ws, sandboxId: session.sandboxId });
    this.#sessionOf.set(ws, session);
    const bytes = this.#o.metrics?.bytes;
    if (bytes) ws.on('message', (data: Buffer) => bytes('from_sandbox', data.length));
    const stop = keepAlive(ws, {
      intervalMs: this.#o.config.keepaliveIntervalMs,
      timeoutMs: this.#o.config.keepaliveTimeoutMs,
      onDead: () => this.#log.warn({ channelId, target, sandboxId: session.sandboxId }, 'relay silent past the keepalive timeout; terminated'),
    });
    // A relay rides its session: when the session ends (lost, superseded), so does the relay.
    const onSessionEnd = () => ws.terminate();
    session.signal.addEventListener('abort', onSessionEnd, { once: true });
    if (session.signal.aborted) ws.terminate();
    ws.once('close', () => {
      stop();
      session.signal.removeEventListener('abort', onSessionEnd);
      this.#open.delete(ws);
      this.#openByChannel.delete(channelId);
    });
  }
}

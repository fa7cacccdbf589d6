import net, { type Socket } from 'node:net';
import { STATUS_CODES } from 'node:http';
import { DeadlineSweep, type Deadline } from './deadlines.js';
import { NameCache, systemLookup } from './dns.js';
import { leanAccept } from './accept.js';
import { LinkedSet, type Link } from './linked-set.js';
import { Exemplars } from './exemplars.js';
import { send, SENT, FULL } from './raw-write.js';
import type { Logger } from '../log.js';
import { isoNow } from '../iso-time.js';
import { DecisionField, type EgressDecision } from './decision.js';
import { CallerFinder, describeCaller, type Caller } from './caller.js';
import { interleaveFamilies, internalReason, parseIp, type IpAddr } from './ip.js';
import { TunnelHost, parseAbsoluteTarget, parseHostPort, stripQuery, tunnelPath, type Target } from './target.js';
import {
  ANY_CALLER,
  CompiledPolicy,
  canonicalPath,
  checkRequest,
  endpointCoversIp,
  parsePolicy,
  type CompiledEndpoint,
  type Policy,
} from './policy.js';
import {
  SocketReader,
  headerLines,
  parseRequestHead,
  parseResponseHead,
  responseFraming,
  type Head,
  type RequestHead,
} from './http.js';

export type { EgressDecision } from './decision.js';

export interface EgressProxyOptions {
  /** Listen address; default '127.0.0.1'. */
  host?: string;
  /** Listen port; default 0 (a free port). */
  port?: number;
  /** null denies everything. */
  policy: Policy | null;
  policyVersion?: number;
  log: Logger;
  /** The DNS lookup behind the proxy's name cache (dns.ts), all addresses; default `dns.promises.lookup(host, { all: true })`. */
  resolve?: (host: string) => Promise<string[]>;
  /** How long a lookup's answer is kept for later connections (see dns.ts); default 10000, 0 = not kept. */
  dnsTtlMs?: number;
  /** Default 10000. */
  connectTimeoutMs?: number;
  /** Idle timeout of plain (non-tunnel, non-upgraded) client connections; default 300000, 0 = none. */
  idleTimeoutMs?: number;
  /**
   * Client connections open at once; past it a new one is closed at once
   * (logged, at most every 10 s). Each holds up to two sockets and their
   * read buffers in the process that also serves the sandbox's execs and
   * SSH, so a runaway agent must not take all its descriptors or memory.
   * Default 2048; 0 = no limit.
   */
  maxConnections?: number;
  onDecision?: (d: EgressDecision) => void;
  /**
   * The process whose descendants are the sandbox's processes, for policies
   * that name `binaries` (caller.ts); default this process.
   */
  callerRoot?: number;
  /** The TCP tables of the callers' network namespace (a confined sandbox's: /proc/<its init>/net). */
  callerNetDir?: string;
  /** The callers' root as the proxy sees it (a confined sandbox's); see CallerOptions.exeRoot. */
  callerExeRoot?: string;
  /**
   * Test seam: opens the upstream TCP connection to an already checked
   * address. Default `net.connect`. Never given a host name.
   */
  connect?: (address: string, port: number) => Socket;
}

export interface EgressProxy {
  readonly port: number;
  readonly url: string;
  /** Atomic swap: new connections and every new L7 request see the new policy. Throws PolicyError. */
  setPolicy(p: Policy | null, version: number): void;
  readonly policyVersion: number;
  close(): Promise<void>;
}

const CONNECT_HEAD_LIMIT = 8 * 1024;
const HEAD_LIMIT = 64 * 1024;
/** A head over its limit is bad input like any other: 400 (the contract's status), the reason naming the limits. */
const HEAD_TOO_LARGE = 'request head too large (a CONNECT head may be 8 KiB, any other 64 KiB)';
const LINGER_MS = 2000;
/** Happy Eyeballs: how long an upstream connect attempt runs alone before the next address is tried too (RFC 8305 5). */
const ATTEMPT_DELAY_MS = 250;
const MAX_CONNECTIONS = 2048;
/** Connections refused at the limit are logged at most this often. */
const DROP_LOG_MS = 10_000;
// Larger socket buffers than Node's 16 KiB default: fewer pause/drain round trips on bulk transfers.
const SOCKET_HWM = 256 * 1024;
// Socket reads (net `onread`, ReadFeed): start at READ_BUF_MIN, grow while reads fill the buffer.
const READ_BUF_MIN = 64 * 1024;
const READ_BUF_MAX = 256 * 1024;
const CONNECT_OK = Buffer.from('HTTP/1.1 200 Connection Established\r\n\r\n', 'latin1');
const noop = (): void => {};
/** A feed sink that drops what it reads (a client being closed). */
const discard = (): boolean => true;

/**
 * An open socket's entry in the proxy's list. `feed`: its reads, for a client
 * accepted with one (otherwise 'data' events). `linger`: set while `#finish`
 * waits for the peer to close.
 */
interface Tracked {
  readonly sock: Socket;
  feed: ReadFeed | null;
  linger: Deadline | null;
  /** A client's processes, looked up once, when a policy that names binaries first decides one of its intents. */
  caller: Promise<Caller> | null;
  /** The same, once known, and as decisions name it. */
  known: Caller | null;
  binary: string | undefined;
}
const TRACKED = Symbol('egress.tracked');
type TrackedSocket = Socket & { [TRACKED]?: Link<Tracked> };

type Outcome = 'keep' | 'close' | 'handed-off';

/** One request/response exchange in progress (see `#exchange`). */
interface Exchange {
  readonly client: Socket;
  readonly cr: SocketReader;
  readonly up: Upstream;
  readonly req: RequestHead;
  /** The client has (part of) a response: a failure can no longer answer 502. */
  started: boolean;
  bodyDone: boolean;
  bodyFailed: boolean;
  readonly done: (outcome: Outcome) => void;
}

/** A CONNECT tunnel to a `rest` endpoint, its requests checked one by one (see `#restNext`). */
interface RestTunnel {
  readonly client: Socket;
  readonly cr: SocketReader;
  readonly up: Upstream;
  readonly t: Target;
  /** Whether its requests name `t`'s host. */
  readonly host: TunnelHost;
  running: boolean;
  again: boolean;
  readonly onHead: (head: Head) => void;
  readonly onOutcome: (outcome: Outcome) => void;
}

interface Upstream {
  key: string;
  addr: IpAddr;
  /** `internalReason(addr)`, computed once. */
  internal: boolean;
  sock: Socket;
  reader: SocketReader;
  /** null for a socket from the `connect` test seam: read through 'data' events. */
  feed: ReadFeed | null;
  /** The exchange whose response is read now, and the head waiter for it (one per upstream, not a closure per request). */
  exchange: Exchange | null;
  readonly onHead: (h: Head) => void;
}

/** Read buffers of closed sockets, for the next ones (fewer large allocations, less GC). */
const spareBuffers: Buffer[] = [];
const SPARE_MAX = 64;

/**
 * Reads of a socket through net's `onread` (an upstream we dial, or a client
 * accepted by leanAccept): each read lands in one reused buffer and goes
 * straight to the current sink, without the Readable machinery and one
 * allocation per chunk of the default path. A sink that holds on to the
 * chunk past its call (queued, or a write that did not complete
 * synchronously) sets `kept` and the next read gets a fresh buffer. A sink
 * returns false to stop reading until the socket is resumed.
 */
class ReadFeed {
  #buf: Buffer | null = null;
  #grow = false;
  kept = false;
  #sink: ((chunk: Buffer) => boolean) | null = null;
  #pending: Buffer[] = [];
  readonly onread = {
    buffer: (): Buffer => {
      let b = this.#buf;
      if (b === null || this.kept || this.#grow) {
        if (b === null) b = spareBuffers.pop() ?? Buffer.allocUnsafe(READ_BUF_MIN);
        else {
          if (!this.kept && b.length === READ_BUF_MIN && spareBuffers.length < SPARE_MAX) spareBuffers.push(b);
          b = Buffer.allocUnsafe(this.#grow ? Math.min(b.length * 2, READ_BUF_MAX) : b.length);
        }
        this.#buf = b;
        this.kept = this.#grow = false;
      }
      return b;
    },
    callback: (n: number, b: Buffer): boolean => {
      if (n === b.length && n < READ_BUF_MAX) this.#grow = true;
      const chunk = b.subarray(0, n);
      const sink = this.#sink;
      if (sink) return sink(chunk);
      this.#pending.push(Buffer.from(chunk));
      return false;
    },
  };

  /**
   * The socket closed: no read can land in the current buffer any more, and
   * no sink holds it (one that did set `kept`, and the buffer was replaced).
   */
  readonly release = (): void => {
    const b = this.#buf;
    this.#buf = null;
    if (b && b.length === READ_BUF_MIN && spareBuffers.length < SPARE_MAX) spareBuffers.push(b);
  };

  /** Route reads to `sink` (null: queue them and stop reading); bytes queued meanwhile go first. */
  attach(sink: ((chunk: Buffer) => boolean) | null): void {
    this.#sink = sink;
    if (sink && this.#pending.length > 0) {
      const q = this.#pending;
      this.#pending = [];
      for (const c of q) sink(c);
    }
  }

  /** Sink for a SocketReader made with this feed as its owner. */
  readerSink(r: SocketReader): (chunk: Buffer) => boolean {
    return (c) => r.push(c);
  }

  /** Sink writing raw bytes to `dst` with backpressure (false: wait for 'drain'). */
  writeSink(dst: Socket): (chunk: Buffer) => boolean {
    return (c) => {
      const r = send(dst, c);
      if (r !== SENT) this.kept = true;
      return r !== FULL;
    };
  }
}

/**
 * One direction of a spliced pair, with `stream.pipeline` semantics:
 * backpressure (pause `src` while `dst` is full), `src`'s end ends `dst`, and
 * an abnormal close (error, reset, close before end) of either destroys the other.
 */
function relay(src: Socket, dst: Socket, feed: ReadFeed | null): void {
  src.once('close', () => {
    if (!src.readableEnded || !src.writableFinished) dst.destroy();
  });
  dst.on('drain', () => src.resume());
  if (src.readableEnded) dst.end();
  else src.once('end', () => dst.end());
  if (feed) feed.attach(feed.writeSink(dst));
  else {
    src.on('data', (c: Buffer) => {
      if (!dst.write(c)) src.pause();
    });
  }
  src.resume();
}

/** Why an upgrade offer is refused at a rest endpoint; the protocol named only when it is a short token (no header text in logs). */
function upgradeReason(protocol: string): string {
  const named = /^[A-Za-z0-9.+_-]{1,32}(\/[A-Za-z0-9.+_-]{1,16})?$/.test(protocol) ? protocol : 'another protocol';
  return `upgrade to ${named}: a rest endpoint lets only WebSocket upgrades through (requests after another switch could not be checked)`;
}

/** An L7 refusal at an `enforcement: audit` endpoint: logged as such, and let through. */
function auditOnly(reason: string): Extract<Verdict, { ok: true }> {
  return { ok: true, action: 'audit', layer: 'L7', reason: `${reason} (audit only: allowed)` };
}

/** The DNS name a target's addresses were looked up for, or null for an IP literal. */
function nameOf(t: Target): string | null {
  return t.host.kind === 'name' ? t.host.name : null;
}

function jsonResponse(status: number, body: object): Buffer {
  const json = JSON.stringify(body);
  return Buffer.from(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\n` +
      'Content-Type: application/json\r\n' +
      `Content-Length: ${Buffer.byteLength(json)}\r\n` +
      'Cache-Control: no-store\r\n' +
      'Connection: close\r\n\r\n' +
      json,
    'utf8',
  );
}

function newExchange(client: Socket, cr: SocketReader, up: Upstream, req: RequestHead, done: (outcome: Outcome) => void): Exchange {
  return { client, cr, up, req, started: false, bodyDone: true, bodyFailed: false, done };
}

/** End an exchange with `outcome`; false, for `#response`'s loop. */
function settle(x: Exchange, outcome: Outcome): false {
  x.done(outcome);
  return false;
}

/** A failed exchange: a 502 unless the client already has (part of) a response or the request body failed. */
function badGateway(client: Socket, quiet: boolean, reason: string): 'close' {
  if (!quiet) client.write(jsonResponse(502, { error: 'Bad Gateway', reason }));
  return 'close';
}

/**
 * The head sent upstream for an absolute-URI request: origin-form, and the
 * Host field the URI's authority (RFC 9112 3.2.2: a proxy replaces the
 * received Host). The policy decided on the URI's host; a Host field naming
 * another would have the origin (a CDN, a virtual host) serve that one.
 */
function forwardHead(req: RequestHead, path: string, authority: string): Buffer {
  let s = `${req.method} ${path} HTTP/${req.version}\r\nHost: ${authority}\r\n`;
  for (const line of headerLines(req)) {
    const name = line.slice(0, line.indexOf(':')).toLowerCase();
    // Hop-by-hop headers meant for us, not the origin; the client's Host, replaced above.
    if (name === 'proxy-connection' || name === 'proxy-authorization' || name === 'host') continue;
    s += line + '\r\n';
  }
  return Buffer.from(s + '\r\n', 'latin1');
}

type Checked = { addrs: IpAddr[] } | { deny: string } | { error: string };

/** A connected upstream socket, before anything reads it. */
interface Dialed {
  addr: IpAddr;
  sock: Socket;
  feed: ReadFeed | null;
}

type DialFailure = { status: number; reason: string };

/** An intent's endpoint (the one that allows it, or the one whose binaries refused it) and verdict. */
interface Decided {
  ep: CompiledEndpoint | null;
  v: Verdict;
}

type Verdict =
  | { ok: true; action: 'allow' | 'audit'; layer: 'L4' | 'L7'; reason: string }
  | { ok: false; status: number; layer: 'L4' | 'L7'; reason: string };

class EgressServer implements EgressProxy {
  readonly #server: net.Server;
  readonly #log: Logger;
  readonly #opts: EgressProxyOptions;
  readonly #names: NameCache;
  readonly #callers: CallerFinder;
  /** `#decide`'s answer, reused: read at once by whoever asked. */
  readonly #decided: Decided = { ep: null, v: { ok: false, status: 403, layer: 'L4', reason: '' } };
  readonly #connectTimeoutMs: number;
  readonly #idleTimeoutMs: number;
  /** Every open socket (a LinkedSet, not a Set: see linked-set.ts). */
  readonly #sockets = new LinkedSet<Tracked>();
  /** A few closed sockets, so a full GC between connections keeps their hidden classes: exemplars.ts. */
  readonly #exemplars = new Exemplars<Socket>(6, 60_000);
  readonly #deadlines: DeadlineSweep;
  /** 'close' listener of every tracked socket (`this` is the socket): one function, not a closure each. */
  readonly #untrack: (this: TrackedSocket) => void;
  #policy: CompiledPolicy | null;
  #version: number;
  #port = 0;
  #closed: Promise<void> | null = null;
  /** The feed of the socket being accepted, between leanAccept's onread hook and #onConnection. */
  #acceptedFeed: ReadFeed | null = null;
  /** Connections refused at the limit since the last line that said so, and when that was. */
  #dropped = 0;
  #droppedLoggedAt = 0;

  constructor(opts: EgressProxyOptions) {
    this.#opts = opts;
    this.#log = opts.log.child({ component: 'egress' });
    this.#connectTimeoutMs = opts.connectTimeoutMs ?? 10_000;
    this.#names = new NameCache({ lookup: opts.resolve ?? systemLookup, ttlMs: opts.dnsTtlMs, timeoutMs: this.#connectTimeoutMs });
    this.#idleTimeoutMs = opts.idleTimeoutMs ?? 300_000;
    this.#callers = new CallerFinder({ root: opts.callerRoot ?? process.pid, ...(opts.callerNetDir ? { netDir: opts.callerNetDir } : {}), ...(opts.callerExeRoot ? { exeRoot: opts.callerExeRoot } : {}) });
    this.#policy = opts.policy ? new CompiledPolicy(parsePolicy(opts.policy)) : null;
    this.#version = opts.policyVersion ?? 0;
    const shortest = Math.min(this.#connectTimeoutMs, this.#idleTimeoutMs || Infinity);
    const deadlines = new DeadlineSweep(Math.max(5, Math.min(250, Math.floor(shortest / 8))));
    this.#deadlines = deadlines;
    const sockets = this.#sockets;
    const exemplars = this.#exemplars;
    this.#untrack = function (this: TrackedSocket) {
      const link = this[TRACKED];
      if (!link) return;
      sockets.delete(link);
      if (link.value.linger) deadlines.delete(link.value.linger);
      link.value.linger = null;
      // Nothing buffered: a kept socket holds no payload.
      if (this.readableLength === 0 && this.writableLength === 0) exemplars.offer(this);
    };
    // allowHalfOpen: a tunnel forwards a FIN one way while the other keeps flowing.
    this.#server = net.createServer({ allowHalfOpen: true, highWaterMark: SOCKET_HWM }, (s) =>
      this.#onConnection(s),
    );
  }

  get port(): number {
    return this.#port;
  }

  get url(): string {
    const h = this.#opts.host ?? '127.0.0.1';
    return `http://${h.includes(':') ? `[${h}]` : h}:${this.#port}`;
  }

  get policyVersion(): number {
    return this.#version;
  }

  setPolicy(p: Policy | null, version: number): void {
    const compiled = p ? new CompiledPolicy(parsePolicy(p)) : null;
    this.#policy = compiled;
    this.#version = version;
    this.#log.info({ policyVersion: version, endpoints: compiled?.endpoints.length ?? 0 }, 'egress policy applied');
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen({ host: this.#opts.host ?? '127.0.0.1', port: this.#opts.port ?? 0 }, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
    this.#server.on('error', (err) => this.#log.error({ err }, 'egress listener error'));
    const max = this.#opts.maxConnections ?? MAX_CONNECTIONS;
    if (max > 0) {
      this.#server.maxConnections = max;
      this.#server.on('drop', () => this.#onDrop(max));
    }
    // Clients read like upstreams: into a reused buffer (ReadFeed), no 'data' events.
    const accepted = leanAccept(this.#server, {
      onread: () => {
        const feed = new ReadFeed();
        this.#acceptedFeed = feed;
        return feed.onread;
      },
    });
    if (!accepted) {
      this.#log.warn({ node: process.version }, 'net.Server internals not as expected: accepting through Node (more GC per connection)');
    }
    this.#port = (this.#server.address() as net.AddressInfo).port;
    this.#log.info({ url: this.url, policyVersion: this.#version }, 'egress proxy listening');
  }

  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
      this.#sockets.forEach((t) => t.sock.destroy());
      this.#deadlines.close();
      this.#exemplars.clear();
    }
    return this.#closed;
  }

  #onDrop(max: number): void {
    this.#dropped++;
    const now = Date.now();
    if (now - this.#droppedLoggedAt < DROP_LOG_MS) return;
    this.#log.warn({ refused: this.#dropped, maxConnections: max }, 'egress connections refused: the proxy is at its connection limit');
    this.#dropped = 0;
    this.#droppedLoggedAt = now;
  }

  #track(s: Socket, feed: ReadFeed | null): void {
    s.setNoDelay(true);
    s.on('error', noop); // errors surface through readers and pipelines; never crash the process
    (s as TrackedSocket)[TRACKED] = this.#sockets.add({ sock: s, feed, linger: null, caller: null, known: null, binary: undefined });
    s.once('close', this.#untrack);
    if (feed) s.once('close', feed.release);
  }

  #onConnection(client: Socket): void {
    const feed = this.#acceptedFeed;
    this.#acceptedFeed = null;
    this.#track(client, feed);
    if (this.#closed) {
      client.destroy();
      return;
    }
    const cr = new SocketReader(client, feed);
    feed?.attach(feed.readerSink(cr));
    // Until its first head the connection is idle: one shared sweep, not a timer per connection.
    const idle = this.#idleTimeoutMs > 0 ? this.#deadlines.add(Date.now() + this.#idleTimeoutMs, () => client.destroy()) : null;
    const onBytes = (): void => this.#firstHead(client, cr, idle, onBytes);
    cr.onReadable(onBytes);
  }

  /**
   * The first head on a connection, taken synchronously as its bytes arrive:
   * a CONNECT is decided and dialed without a promise in between; anything
   * else goes to the async request loop.
   */
  #firstHead(client: Socket, cr: SocketReader, idle: Deadline | null, onBytes: () => void): void {
    const head = cr.takeHead(HEAD_LIMIT, CONNECT_HEAD_LIMIT);
    if (head === undefined) return cr.onReadable(onBytes);
    if (idle) this.#deadlines.delete(idle);
    if (client.destroyed) return;
    if (head === null || head === 'truncated') return this.#finish(client, cr);
    if (head === 'too-large') return this.#reject(client, cr, 400, HEAD_TOO_LARGE);
    const req = parseRequestHead(head);
    if (typeof req === 'string') return this.#reject(client, cr, 400, req);
    if (req.method === 'CONNECT') return this.#connect(client, cr, req);
    if (this.#idleTimeoutMs > 0) client.setTimeout(this.#idleTimeoutMs, () => client.destroy());
    this.#serve(client, cr, req).catch((err: unknown) => this.#failed(client, err));
  }

  #failed(client: Socket, err: unknown): void {
    this.#log.debug({ err }, 'egress connection failed');
    client.destroy();
  }

  #emit(decision: EgressDecision): void {
    // A deny is a warning: it is what an operator looks for, and the gateway keeps warnings through a flood of allows.
    const line = { decision: new DecisionField(decision) };
    if (decision.action === 'deny') this.#log.warn(line, 'egress decision');
    else this.#log.info(line, 'egress decision');
    try {
      this.#opts.onDecision?.(decision);
    } catch (err) {
      this.#log.warn({ err }, 'onDecision callback threw');
    }
  }

  /** Write a final response, half-close, and give the peer a moment to read it before destroying. */
  #finish(client: Socket, cr: SocketReader | null, response?: Buffer): void {
    const tracked = (client as TrackedSocket)[TRACKED]?.value;
    if (client.destroyed || tracked?.linger) return;
    const linger = this.#deadlines.add(Date.now() + LINGER_MS, () => client.destroy());
    if (tracked) tracked.linger = linger;
    cr?.detach();
    tracked?.feed?.attach(discard);
    if (client.timeout) client.setTimeout(0);
    client.on('data', noop);
    client.resume();
    if (response) client.end(response);
    else client.end();
  }

  #reject(client: Socket, cr: SocketReader, status: number, reason: string): void {
    this.#log.debug({ status, reason }, 'egress bad request');
    this.#finish(client, cr, jsonResponse(status, { error: STATUS_CODES[status] ?? 'error', reason }));
  }

  /** One allowed (or audited) L7 request: the decision line shared by both front doors. */
  #emitAllowed(
    client: Socket,
    v: Extract<Verdict, { ok: true }>,
    t: { key: string; port: number },
    ep: CompiledEndpoint,
    method: string,
    path: string,
  ): void {
    this.#emit({
      time: isoNow(),
      action: v.action,
      host: t.key,
      port: t.port,
      method,
      path,
      policy: ep.policy,
      endpoint: ep.label,
      // A key always (undefined: left out of the JSON), not a spread: one literal, one hidden class, per L7 request.
      binary: this.#binaryOf(client),
      reason: v.reason,
      layer: v.layer,
    });
  }

  #deny(
    client: Socket,
    cr: SocketReader,
    status: number,
    t: { key: string; port: number },
    ep: CompiledEndpoint | null,
    layer: 'L4' | 'L7',
    reason: string,
    method?: string,
    path?: string,
  ): void {
    const binary = this.#binaryOf(client);
    this.#emit({
      time: isoNow(),
      action: 'deny',
      host: t.key,
      port: t.port,
      ...(method !== undefined ? { method } : {}),
      ...(path !== undefined ? { path } : {}),
      ...(ep ? { policy: ep.policy, endpoint: ep.label } : {}),
      ...(binary !== undefined ? { binary } : {}),
      reason,
      layer,
    });
    const body: Record<string, unknown> = {
      error: status === 403 ? 'egress denied by network policy' : (STATUS_CODES[status] ?? 'error'),
      host: t.key,
      port: t.port,
      reason,
      policy: ep?.policy ?? null,
      layer,
    };
    if (method !== undefined) body.method = method;
    if (path !== undefined) body.path = path;
    if (binary !== undefined) body.binary = binary;
    this.#finish(client, cr, jsonResponse(status, body));
  }

  /**
   * Policy check of one intent; `method`/`target` only for HTTP requests,
   * `upgradeOther` for one offering a protocol switch to other than websocket.
   */
  #check(ep: CompiledEndpoint | null, hasPolicy: boolean, method?: string, target?: string, upgradeOther?: string | null): Verdict {
    if (!ep) {
      return {
        ok: false,
        status: 403,
        layer: 'L4',
        reason: hasPolicy ? 'no policy endpoint allows this host and port' : 'no network policy: all egress is denied',
      };
    }
    if (!ep.rest || method === undefined || target === undefined) {
      return { ok: true, action: 'allow', layer: 'L4', reason: 'endpoint allows destination' };
    }
    const path = canonicalPath(target);
    if (path === null) {
      return { ok: false, status: 400, layer: 'L7', reason: 'path rejected: encoded slash, backslash or .. escape' };
    }
    const c = checkRequest(ep, method, path);
    // After a switch to another protocol than WebSocket (h2c: HTTP/2 requests), requests could no longer be checked.
    const v = c.allowed && upgradeOther ? { allowed: false, reason: upgradeReason(upgradeOther) } : c;
    if (v.allowed) return { ok: true, action: 'allow', layer: 'L7', reason: v.reason };
    if (ep.audit) return auditOnly(v.reason);
    return { ok: false, status: 403, layer: 'L7', reason: v.reason };
  }

  /**
   * The endpoint and verdict for one intent under `policy`. `caller` is the
   * client's processes when the policy names binaries (else null): an
   * endpoint of a policy whose binaries the caller is not among is passed
   * over. When that leaves none but one would cover the intent for another
   * caller, the refusal names the caller and that endpoint's policy; at an
   * audit endpoint it is logged and let through (after the endpoint's own
   * L7 check). The answer is one object of the server's, read at once by
   * the caller (no allocation per request).
   */
  #decide(
    policy: CompiledPolicy | null,
    t: { key: string; port: number },
    caller: Caller | null,
    method?: string,
    target?: string,
    upgradeOther?: string | null,
  ): Decided {
    const d = this.#decided;
    const ep = policy?.match(t.key, t.port, caller) ?? null;
    const cover = ep === null && caller !== null ? policy!.match(t.key, t.port, ANY_CALLER) : null;
    d.ep = ep ?? cover;
    if (cover === null) {
      d.v = this.#check(ep, policy !== null, method, target, upgradeOther);
      return d;
    }
    const reason = `${describeCaller(caller!)} is not among the binaries of policy '${cover.policy}'`;
    if (!cover.audit) d.v = { ok: false, status: 403, layer: 'L4', reason };
    else {
      const v = this.#check(cover, true, method, target, upgradeOther);
      d.v = v.ok ? { ok: true, action: 'audit', layer: v.layer, reason: `${reason} (audit only: allowed)` } : v;
    }
    return d;
  }

  /** The processes behind a client connection, looked up once per connection. */
  #callerOf(client: Socket): Promise<Caller> {
    const tracked = (client as TrackedSocket)[TRACKED]?.value;
    if (tracked?.caller) return tracked.caller;
    const p = this.#callers.find(client);
    if (!tracked) return p;
    tracked.caller = p.then((c) => {
      tracked.known = c;
      tracked.binary = describeCaller(c);
      return c;
    });
    return tracked.caller;
  }

  /** The client's caller when already looked up, for the synchronous paths. */
  #knownCaller(client: Socket): Caller | null {
    return (client as TrackedSocket)[TRACKED]?.value.known ?? null;
  }

  /** What decisions on this client name as its binary: set once a policy that names binaries looked it up. */
  #binaryOf(client: Socket): string | undefined {
    return (client as TrackedSocket)[TRACKED]?.value.binary;
  }

  /**
   * Resolve once and check every address; the caller connects to exactly
   * these. An IP literal is checked synchronously (no resolver, no promise).
   */
  #resolveChecked(t: Target, ep: CompiledEndpoint): Checked | Promise<Checked> {
    if (t.host.kind === 'ip') return this.#checkAddrs(t, ep, [t.host.addr]);
    return this.#resolveName(t, t.host.name, ep);
  }

  /** A kept answer is checked at once; a lookup, when it answers. */
  #resolveName(t: Target, name: string, ep: CompiledEndpoint): Checked | Promise<Checked> {
    const r = this.#names.resolve(name);
    if (Array.isArray(r)) return this.#checkAnswers(t, ep, r);
    return r.then(
      (answers) => this.#checkAnswers(t, ep, answers),
      (err: unknown) => ({ error: `could not resolve ${t.key}: ${(err as NodeJS.ErrnoException).code ?? 'error'}` }),
    );
  }

  #checkAnswers(t: Target, ep: CompiledEndpoint, answers: string[]): Checked {
    const addrs: IpAddr[] = [];
    for (const a of answers) {
      const ip = parseIp(a);
      if (!ip) return { deny: `resolver returned an invalid address for ${t.key}` };
      addrs.push(ip);
    }
    if (addrs.length === 0) return { error: `could not resolve ${t.key}: no addresses` };
    return this.#checkAddrs(t, ep, addrs);
  }

  #checkAddrs(t: Target, ep: CompiledEndpoint, addrs: IpAddr[]): Checked {
    for (const a of addrs) {
      const why = internalReason(a);
      if (why && !endpointCoversIp(ep, a)) {
        return {
          deny: `${t.key} is internal address ${a.text} (${why}); allowed only if the endpoint names this IP or lists it in allowed_ips`,
        };
      }
    }
    return { addrs };
  }

  /**
   * Connect to the checked addresses within one connect timeout; `done`
   * gets the first socket that connects, or the failure to answer with.
   * Happy Eyeballs (RFC 8305): the addresses alternate between families,
   * and while an attempt has neither connected nor failed, the next starts
   * after ATTEMPT_DELAY_MS (at once after a failure), the earlier ones left
   * running. The first to connect wins and the others are closed. So an
   * address that never answers (an IPv6 route that drops packets, say)
   * delays a connection by the attempt delay, not the whole timeout. When
   * the addresses are a kept answer for `name` and another than the first
   * connects, the name cache lists it first from then on.
   */
  #dial(addrs: IpAddr[], port: number, name: string | null, done: (r: Dialed | DialFailure) => void): void {
    const order = addrs.length > 1 ? interleaveFamilies(addrs) : addrs;
    const running: Socket[] = [];
    let next = 0;
    let settled = false;
    let last: NodeJS.ErrnoException | null = null;
    let stagger: NodeJS.Timeout | null = null;
    const settle = (): void => {
      settled = true;
      this.#deadlines.delete(timer);
      if (stagger !== null) clearTimeout(stagger);
      stagger = null;
      for (const s of running) s.destroy();
      running.length = 0;
    };
    const fail = (): void => {
      settle();
      const timedOut = !last || last.code === 'ETIMEDOUT';
      done({
        status: timedOut ? 504 : 502,
        reason: timedOut ? 'connect to upstream timed out' : `connect to upstream failed: ${last?.code ?? 'error'}`,
      });
    };
    const attempt = (): void => {
      if (stagger !== null) clearTimeout(stagger);
      stagger = null;
      if (settled || this.#closed) return;
      if (next >= order.length) {
        if (running.length === 0) fail();
        return;
      }
      const addr = order[next++]!;
      const feed = this.#opts.connect ? null : new ReadFeed();
      const s = feed
        ? net.connect({
            host: addr.text,
            port,
            allowHalfOpen: true,
            noDelay: true,
            highWaterMark: SOCKET_HWM,
            onread: feed.onread,
            // Set to what net.Socket sets anyway, so its copy of these
            // options gets no new keys (and no new hidden class): accept.ts.
            emitClose: false,
            autoDestroy: true,
            decodeStrings: false,
          } as net.NetConnectOpts)
        : this.#opts.connect!(addr.text, port);
      this.#track(s, feed);
      running.push(s);
      const drop = (): void => {
        const k = running.indexOf(s);
        if (k >= 0) running.splice(k, 1);
      };
      s.once('error', (err: Error) => {
        if (settled) return;
        drop();
        s.destroy();
        last = err;
        attempt();
      });
      s.once('connect', () => {
        if (settled) return;
        drop();
        settle();
        if (name !== null && addr !== addrs[0]) this.#names.prefer(name, addr.text);
        done({ addr, sock: s, feed });
      });
      if (next < order.length) {
        stagger = setTimeout(attempt, ATTEMPT_DELAY_MS);
        // The dial's own: cleared when it settles; never what keeps a closing process alive.
        stagger.unref();
      }
    };
    const timer = this.#deadlines.add(Date.now() + this.#connectTimeoutMs, () => {
      if (settled) return;
      last = Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' });
      fail();
    });
    attempt();
  }

  /** An upstream for HTTP exchanges: dialed, with a reader for its responses. */
  #upstream(key: string, d: Dialed): Upstream {
    const reader = new SocketReader(d.sock, d.feed);
    d.feed?.attach(d.feed.readerSink(reader));
    const up: Upstream = {
      key,
      addr: d.addr,
      internal: internalReason(d.addr) !== null,
      sock: d.sock,
      reader,
      feed: d.feed,
      exchange: null,
      onHead: (h) => this.#response(up.exchange!, h),
    };
    return up;
  }

  #open(t: Target, addrs: IpAddr[]): Promise<Upstream | DialFailure> {
    return new Promise((resolve) =>
      this.#dial(addrs, t.port, nameOf(t), (r) => resolve('sock' in r ? this.#upstream(`${t.key}:${t.port}`, r) : r)),
    );
  }

  /** Plain HTTP (absolute-URI requests) on a client connection, starting with its first request. */
  async #serve(client: Socket, cr: SocketReader, first: RequestHead): Promise<void> {
    let up: Upstream | null = null;
    let handedOff = false;
    try {
      let req: RequestHead = first;
      for (;;) {
        if (req.method === 'CONNECT') {
          up?.sock.destroy();
          up = null;
          handedOff = true;
          return this.#connect(client, cr, req);
        }
        const r = await this.#forward(client, cr, req, up);
        up = r.up;
        if (r.outcome === 'handed-off') {
          handedOff = true;
          return;
        }
        if (r.outcome === 'close') return;
        const head = await cr.readHead(HEAD_LIMIT, CONNECT_HEAD_LIMIT);
        if (head === null || head === 'truncated') return;
        if (head === 'too-large') return this.#reject(client, cr, 400, HEAD_TOO_LARGE);
        const next = parseRequestHead(head);
        if (typeof next === 'string') return this.#reject(client, cr, 400, next);
        req = next;
      }
    } finally {
      if (!handedOff) {
        up?.sock.destroy();
        this.#finish(client, cr);
      }
    }
  }

  async #forward(
    client: Socket,
    cr: SocketReader,
    req: RequestHead,
    prev: Upstream | null,
  ): Promise<{ outcome: Outcome; up: Upstream | null }> {
    let up = prev;
    const t = parseAbsoluteTarget(req.target);
    if (typeof t === 'string') {
      this.#reject(client, cr, 400, t);
      return { outcome: 'close', up };
    }
    const policy = this.#policy;
    const caller = policy?.needsCaller ? await this.#callerOf(client) : null;
    const { ep, v } = this.#decide(policy, t, caller, req.method, t.path, req.upgradeOther);
    const path = stripQuery(t.path);
    if (!v.ok) {
      this.#deny(client, cr, v.status, t, ep, v.layer, v.reason, req.method, path);
      return { outcome: 'close', up };
    }
    const endpoint = ep!;
    const key = `${t.key}:${t.port}`;
    if (up && (up.key !== key || up.reader.ended)) {
      up.sock.destroy();
      up = null;
    }
    if (up && up.internal && !endpointCoversIp(endpoint, up.addr)) {
      this.#deny(client, cr, 403, t, endpoint, 'L4', `internal address ${up.addr.text} no longer allowed`, req.method, path);
      return { outcome: 'close', up };
    }
    let addrs: IpAddr[] | null = null;
    if (!up) {
      let r = this.#resolveChecked(t, endpoint);
      if (r instanceof Promise) r = await r;
      if ('deny' in r) {
        this.#deny(client, cr, 403, t, endpoint, 'L4', r.deny, req.method, path);
        return { outcome: 'close', up };
      }
      if ('error' in r) {
        this.#finish(client, cr, jsonResponse(502, { error: 'Bad Gateway', host: t.key, port: t.port, reason: r.error }));
        return { outcome: 'close', up };
      }
      addrs = r.addrs;
    }
    const dial = !up;
    // Logged before a dial (which may fail); on a kept-alive upstream, after the head is out (below).
    if (dial) this.#emitAllowed(client, v, t, endpoint, req.method, path);
    if (!up) {
      const o = await this.#open(t, addrs!);
      if (!('sock' in o)) {
        this.#finish(client, cr, jsonResponse(o.status, { error: STATUS_CODES[o.status], host: t.key, port: t.port, reason: o.reason }));
        return { outcome: 'close', up: null };
      }
      up = o;
    }
    const exchange = this.#exchangeAsync(client, cr, up, req, forwardHead(req, t.path, t.authority));
    if (!dial) this.#emitAllowed(client, v, t, endpoint, req.method, path);
    const outcome = await exchange;
    return { outcome, up: outcome === 'handed-off' ? null : up };
  }

  /** A CONNECT: decide, resolve and dial, then splice (L4) or check each request (L7); callbacks, no promise for IP literals. */
  #connect(client: Socket, cr: SocketReader, req: RequestHead): void {
    const t = parseHostPort(req.target, null);
    if (typeof t === 'string') return this.#reject(client, cr, 400, t);
    // No idle timeout on tunnels (a CONNECT after plain requests had one).
    if (client.timeout) client.setTimeout(0);
    const policy = this.#policy;
    if (policy?.needsCaller) {
      this.#callerOf(client).then(
        (caller) => this.#connectFor(client, cr, t, policy, caller),
        (err: unknown) => this.#failed(client, err),
      );
    } else this.#connectFor(client, cr, t, policy, null);
  }

  #connectFor(client: Socket, cr: SocketReader, t: Target, policy: CompiledPolicy | null, caller: Caller | null): void {
    if (client.destroyed) return;
    const { ep, v } = this.#decide(policy, t, caller);
    if (!v.ok) return this.#deny(client, cr, v.status, t, ep, v.layer, v.reason);
    const endpoint = ep!;
    const r = this.#resolveChecked(t, endpoint);
    if (r instanceof Promise) {
      r.then(
        (c) => this.#connectChecked(client, cr, t, endpoint, v, c),
        (err: unknown) => this.#failed(client, err),
      );
    } else this.#connectChecked(client, cr, t, endpoint, v, r);
  }

  #connectChecked(
    client: Socket,
    cr: SocketReader,
    t: Target,
    endpoint: CompiledEndpoint,
    v: Extract<Verdict, { ok: true }>,
    r: Checked,
  ): void {
    if ('deny' in r) return this.#deny(client, cr, 403, t, endpoint, 'L4', r.deny);
    if ('error' in r) {
      return this.#finish(client, cr, jsonResponse(502, { error: 'Bad Gateway', host: t.key, port: t.port, reason: r.error }));
    }
    this.#emit({
      time: isoNow(),
      action: v.action,
      host: t.key,
      port: t.port,
      policy: endpoint.policy,
      endpoint: endpoint.label,
      binary: this.#binaryOf(client),
      reason: v.action === 'audit' ? v.reason : endpoint.rest ? 'endpoint allows destination; each request checked at L7' : 'endpoint allows destination',
      layer: 'L4',
    });
    this.#dial(r.addrs, t.port, nameOf(t), (d) => this.#tunnel(client, cr, t, endpoint, d));
  }

  #tunnel(client: Socket, cr: SocketReader, t: Target, endpoint: CompiledEndpoint, d: Dialed | DialFailure): void {
    if (!('sock' in d)) {
      return this.#finish(client, cr, jsonResponse(d.status, { error: STATUS_CODES[d.status], host: t.key, port: t.port, reason: d.reason }));
    }
    if (client.destroyed) {
      d.sock.destroy();
      return;
    }
    client.write(CONNECT_OK);
    if (!endpoint.rest) return this.#splice(client, cr, d.sock, d.feed, null);
    const up = this.#upstream(`${t.key}:${t.port}`, d);
    this.#restTunnel(client, cr, up, t);
  }

  /**
   * Plain HTTP inside a CONNECT tunnel to a `protocol: rest` endpoint: check
   * every request. Starts once the first byte is read (a TLS ClientHello
   * passes at L4); callbacks, no promise per tunnel.
   */
  #restTunnel(client: Socket, cr: SocketReader, up: Upstream, t: Target): void {
    try {
      this.#restStart(client, cr, up, t);
    } catch (err) {
      this.#failed(client, err);
      up.sock.destroy();
    }
  }

  #restStart(client: Socket, cr: SocketReader, up: Upstream, t: Target): void {
    const first = cr.firstByte();
    if (first === undefined) return cr.onReadable(() => this.#restTunnel(client, cr, up, t));
    if (first === 0x16) {
      // TLS ClientHello: we cannot see requests; pass it at L4 and say so.
      const ep = this.#policy?.match(t.key, t.port, ANY_CALLER);
      this.#log.warn({ host: t.key, port: t.port }, 'TLS inside a rest tunnel: L7 rules not enforced');
      this.#emit({
        time: isoNow(),
        action: 'allow',
        host: t.key,
        port: t.port,
        ...(ep ? { policy: ep.policy, endpoint: ep.label } : {}),
        reason: 'TLS inside a rest tunnel: passed through at L4, L7 rules not enforced',
        layer: 'L4',
      });
      return this.#splice(client, cr, up.sock, up.feed, up.reader);
    }
    const s: RestTunnel = {
      client,
      cr,
      up,
      t,
      host: new TunnelHost(t.key, t.port),
      running: false,
      again: false,
      onHead: (head) => this.#restRequest(s, head),
      onOutcome: (o) => {
        if (o === 'handed-off') return;
        if (o === 'close' || up.reader.ended) return this.#restEnd(s);
        this.#restNext(s);
      },
    };
    this.#restNext(s);
  }

  /**
   * Read the tunnel's next request. Callbacks, no promise per request; a
   * request whose whole exchange completes at once (pipelined requests and
   * responses already read) loops here instead of recursing.
   */
  #restNext(s: RestTunnel): void {
    if (s.running) {
      s.again = true;
      return;
    }
    s.running = true;
    do {
      s.again = false;
      s.cr.onHead(HEAD_LIMIT, HEAD_LIMIT, s.onHead);
    } while (s.again);
    s.running = false;
  }

  /** The tunnel is done without a hand-off: close both sides. */
  #restEnd(s: RestTunnel): void {
    s.up.sock.destroy();
    this.#finish(s.client, s.cr);
  }

  #restRequest(s: RestTunnel, head: Head): void {
    const { client, cr, up, t } = s;
    try {
      if (head === null || head === 'truncated') return this.#restEnd(s);
      if (head === 'too-large') {
        this.#reject(client, cr, 400, HEAD_TOO_LARGE);
        return this.#restEnd(s);
      }
      const req = parseRequestHead(head);
      if (typeof req === 'string') {
        this.#reject(client, cr, 400, req);
        return this.#restEnd(s);
      }
      const policy = this.#policy;
      let caller: Caller | null = null;
      if (policy?.needsCaller) {
        caller = this.#knownCaller(client);
        // A policy that names binaries came in after the CONNECT: look the caller up once, then decide this request.
        if (caller === null) {
          this.#callerOf(client).then(
            () => this.#restRequest(s, head),
            (err: unknown) => {
              this.#failed(client, err);
              this.#restEnd(s);
            },
          );
          return;
        }
      }
      const target = tunnelPath(req.target);
      const path = stripQuery(target);
      const d = this.#decide(policy, t, caller, req.method, target, req.upgradeOther);
      const ep = d.ep;
      let v = d.v;
      if (!v.ok) {
        this.#deny(client, cr, v.status, t, ep, v.layer, v.reason, req.method, path);
        return this.#restEnd(s);
      }
      const elsewhere = s.host.mismatch(req);
      if (elsewhere !== null) {
        if (!ep!.audit) {
          this.#deny(client, cr, 403, t, ep, 'L7', elsewhere, req.method, path);
          return this.#restEnd(s);
        }
        v = auditOnly(elsewhere);
      }
      if (up.internal && !endpointCoversIp(ep!, up.addr)) {
        this.#deny(client, cr, 403, t, ep, 'L4', `internal address ${up.addr.text} no longer allowed`, req.method, path);
        return this.#restEnd(s);
      }
      // The decision line is written once the head is on its way, off the request's path.
      try {
        this.#exchange(newExchange(client, cr, up, req, s.onOutcome), req.raw);
      } finally {
        this.#emitAllowed(client, v, t, ep!, req.method, path);
      }
    } catch (err) {
      this.#failed(client, err);
      this.#restEnd(s);
    }
  }

  /** `#exchange` as a promise (the forward front door). */
  #exchangeAsync(client: Socket, cr: SocketReader, up: Upstream, req: RequestHead, head: Buffer): Promise<Outcome> {
    return new Promise((done) => this.#exchange(newExchange(client, cr, up, req, done), head));
  }

  /**
   * One request/response exchange, driven by callbacks; `x.done` gets the
   * outcome once. The request body streams upstream while responses are
   * read, so `Expect: 100-continue` and early responses work.
   */
  #exchange(x: Exchange, head: Buffer): void {
    if (x.req.framing.kind === 'none') send(x.up.sock, head);
    else {
      const r = x.cr.pipeBodyThen(x.up.sock, x.req.framing, head, (err) => this.#requestBodyEnd(x, err));
      if (r === undefined) x.bodyDone = false;
      else if (r !== null) this.#requestBodyEnd(x, r);
    }
    x.up.exchange = x;
    x.up.reader.onHead(HEAD_LIMIT, HEAD_LIMIT, x.up.onHead);
  }

  #requestBodyEnd(x: Exchange, err: Error | null): void {
    if (err === null) x.bodyDone = true;
    else {
      x.bodyFailed = true;
      x.up.sock.destroy();
    }
  }

  /** A response head from upstream (or why there is none). */
  #response(x: Exchange, head: Head): void {
    let raw = head;
    try {
      // Interim responses already read are taken in this loop, not by recursion.
      while (this.#responseHead(x, raw)) {
        const next = x.up.reader.takeHead(HEAD_LIMIT);
        if (next === undefined) return x.up.reader.onHead(HEAD_LIMIT, HEAD_LIMIT, x.up.onHead);
        raw = next;
      }
    } catch (err) {
      this.#failed(x.client, err);
      x.done('close');
    }
  }

  /**
   * One response head: true when it was an interim (1xx) response, now
   * forwarded, and the final one is still to come; false once the exchange
   * is settled (`x.done` called) or its body is piping.
   */
  #responseHead(x: Exchange, raw: Head): boolean {
    const quiet = x.started || x.bodyFailed;
    if (raw === null || raw === 'truncated') return settle(x, badGateway(x.client, quiet, 'upstream closed without a response'));
    if (raw === 'too-large') return settle(x, badGateway(x.client, quiet, 'upstream response head too large'));
    const res = parseResponseHead(raw);
    if (typeof res === 'string') return settle(x, badGateway(x.client, quiet, `invalid upstream response: ${res}`));
    if (res.status === 101) {
      // Only a requested upgrade may switch protocols; anything else is a protocol error.
      if (!x.req.upgrade) return settle(x, badGateway(x.client, quiet, 'unsolicited 101 Switching Protocols'));
      x.client.write(raw);
      this.#splice(x.client, x.cr, x.up.sock, x.up.feed, x.up.reader);
      return settle(x, 'handed-off');
    }
    if (res.status < 200) {
      x.client.write(raw); // 100 Continue, 103 Early Hints: forward and keep reading
      x.started = true;
      return true;
    }
    const framing = responseFraming(x.req.method, res);
    if (typeof framing === 'string') return settle(x, badGateway(x.client, quiet, framing));
    x.started = true;
    const keep = framing.kind !== 'close' && x.req.keepAlive && res.keepAlive;
    const end = (err: Error | null): void => x.done(err === null && keep && x.bodyDone ? 'keep' : 'close');
    const r = x.up.reader.pipeBodyThen(x.client, framing, raw, end);
    if (r !== undefined) end(r);
    return false;
  }

  /**
   * After a CONNECT to an L4 endpoint or a 101: stop parsing and pipe raw
   * bytes both ways, no idle timeout. Bytes already read past the last head
   * go first.
   */
  #splice(client: Socket, cr: SocketReader, upSock: Socket, feed: ReadFeed | null, ur: SocketReader | null): void {
    // `relay` below takes over both sockets' reads in this tick.
    const fromClient = cr.detach(false);
    const clientFeed = (client as TrackedSocket)[TRACKED]?.value.feed ?? null;
    clientFeed?.attach(null);
    const fromUp = ur ? ur.detach(false) : [];
    feed?.attach(null);
    if (client.timeout) client.setTimeout(0);
    if (upSock.timeout) upSock.setTimeout(0);
    if (client.destroyed || upSock.destroyed) {
      client.destroy();
      upSock.destroy();
      return;
    }
    for (const b of fromUp) client.write(b);
    for (const b of fromClient) upSock.write(b);
    relay(client, upSock, clientFeed);
    relay(upSock, client, feed);
  }
}

/** Start the egress proxy; resolves once it listens. Throws PolicyError for an invalid policy. */
export async function startEgressProxy(opts: EgressProxyOptions): Promise<EgressProxy> {
  const server = new EgressServer(opts);
  await server.listen();
  return server;
}

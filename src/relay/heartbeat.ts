import { performance } from 'node:perf_hooks';
import type net from 'node:net';
import WebSocket from 'ws';

/**
 * Starts the close handshake, reading again first: a socket paused for
 * backpressure would never read the peer's close frame, and the handshake
 * would wait for ws's 30 s close timer. No-op once closing or closed.
 */
export function closeWebSocket(ws: WebSocket, code: number, reason: string): void {
  if (ws.readyState === WebSocket.CLOSING || ws.readyState === WebSocket.CLOSED) return;
  ws.resume(); // a no-op while still connecting
  ws.close(code, reason);
}

export interface KeepAliveOptions {
  /** Ping period. */
  intervalMs: number;
  /** A socket from which nothing at all was received this long is terminated. */
  timeoutMs: number;
  /** Called once, right after the socket was terminated for silence. */
  onDead?: () => void;
}

interface Member {
  ws: WebSocket;
  timeoutMs: number;
  lastSeen: number;
  onDead: (() => void) | undefined;
  stop: () => void;
}

/**
 * One interval timer per ping period walks every socket tracked at that
 * period: thousands of sockets cost one timer, a Set entry and a few
 * listeners each.
 */
class Wheel {
  readonly #intervalMs: number;
  readonly #members = new Set<Member>();
  #timer: NodeJS.Timeout | null = null;
  #lastPing = 0;
  #lastTick = performance.now();
  #tickMs: number;

  constructor(intervalMs: number) {
    this.#intervalMs = intervalMs;
    this.#tickMs = intervalMs;
  }

  add(member: Member): void {
    this.#members.add(member);
    // Silence is checked more often than pings are sent, so a dead peer is
    // found within about an eighth of the timeout past it, not a whole interval.
    const tick = Math.max(25, Math.min(this.#intervalMs, Math.floor(member.timeoutMs / 8)));
    if (this.#timer && tick < this.#tickMs) {
      clearInterval(this.#timer);
      this.#timer = null;
    }
    if (!this.#timer) {
      this.#tickMs = Math.min(this.#tickMs, tick);
      this.#lastTick = performance.now();
      this.#timer = setInterval(() => this.#tick(), this.#tickMs);
      this.#timer.unref();
    }
  }

  delete(member: Member): void {
    this.#members.delete(member);
    if (this.#members.size === 0 && this.#timer) {
      clearInterval(this.#timer);
      this.#timer = null;
      wheels.delete(this.#intervalMs);
    }
  }

  #tick(): void {
    const now = performance.now();
    // A tick this late means our own event loop was blocked (a long GC, CPU
    // starvation): what peers sent meanwhile is still unread, and timers run
    // before reads. The stall is not the peer's silence, so it does not count.
    // Only stalls big enough to matter (a quarter of a timeout) are discounted,
    // so ordinary scheduling jitter does not slow the detection of dead peers.
    const late = now - this.#lastTick - this.#tickMs;
    this.#lastTick = now;
    if (late > this.#tickMs) {
      for (const member of this.#members) {
        if (late > member.timeoutMs / 4) member.lastSeen = Math.min(now, member.lastSeen + late);
      }
    }
    const ping = now - this.#lastPing >= this.#intervalMs - this.#tickMs / 2;
    if (ping) this.#lastPing = now;
    const dead: Member[] = [];
    for (const member of this.#members) {
      const { ws } = member;
      // A socket we paused for backpressure is not read, so its pongs wait in
      // the kernel: our own slowness is not the peer's death.
      if (ws.isPaused) member.lastSeen = now;
      if (now - member.lastSeen >= member.timeoutMs) {
        dead.push(member);
        continue;
      }
      if (ping && ws.readyState === WebSocket.OPEN) {
        try {
          ws.ping();
        } catch {
          // closing under us: its 'close' event untracks it
        }
      }
    }
    for (const member of dead) {
      member.stop();
      // The peer is presumed gone: no close handshake that would wait for it.
      member.ws.terminate();
      member.onDead?.();
    }
  }
}

const wheels = new Map<number, Wheel>();
const tracked = new WeakMap<WebSocket, Member>();

/** Milliseconds since anything was last received on a tracked socket (Infinity when untracked). */
export function silentForMs(ws: WebSocket): number {
  const member = tracked.get(ws);
  return member ? performance.now() - member.lastSeen : Infinity;
}

/**
 * Ping/pong liveness for one WebSocket, identical on server and client ends:
 * pings every `intervalMs`; anything received (pong, ping, message, or any
 * raw bytes of a frame still arriving) counts as life; after `timeoutMs` of
 * silence the socket is `terminate()`d (no close handshake) and `onDead` is
 * called. Death is detected within about `timeoutMs + timeoutMs / 8` of the
 * last byte received. A client still connecting is terminated too (ws then emits
 * 'error'). Tracking ends when the socket closes or the returned stop
 * function is called (idempotent).
 */
export function keepAlive(ws: WebSocket, opts: KeepAliveOptions): () => void {
  if (!(opts.intervalMs > 0) || !(opts.timeoutMs > 0)) {
    throw new RangeError('keepAlive: intervalMs and timeoutMs must be positive');
  }
  if (ws.readyState === WebSocket.CLOSING || ws.readyState === WebSocket.CLOSED) return () => {};

  let wheel = wheels.get(opts.intervalMs);
  if (!wheel) {
    wheel = new Wheel(opts.intervalMs);
    wheels.set(opts.intervalMs, wheel);
  }
  const owner = wheel;

  let raw: net.Socket | null = null;
  let stopped = false;
  const seen = (): void => {
    member.lastSeen = performance.now();
  };
  // Raw bytes count too: one large frame arriving slowly is life before it
  // becomes a 'message'. ws keeps its socket private, hence the cast.
  const attachRaw = (): void => {
    raw = (ws as unknown as { _socket?: net.Socket | null })._socket ?? null;
    raw?.on('data', seen);
  };
  const stop = (): void => {
    if (stopped) return;
    stopped = true;
    owner.delete(member);
    tracked.delete(ws);
    ws.off('message', seen);
    ws.off('ping', seen);
    ws.off('pong', seen);
    ws.off('open', onOpen);
    ws.off('close', stop);
    raw?.off('data', seen);
    raw = null;
  };
  const onOpen = (): void => {
    seen();
    attachRaw();
  };

  const member: Member = { ws, timeoutMs: opts.timeoutMs, lastSeen: performance.now(), onDead: opts.onDead, stop };
  ws.on('message', seen);
  ws.on('ping', seen);
  ws.on('pong', seen);
  ws.on('close', stop);
  if (ws.readyState === WebSocket.CONNECTING) ws.once('open', onOpen);
  else attachRaw();
  owner.add(member);
  tracked.set(ws, member);
  return stop;
}

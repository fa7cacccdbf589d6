import WebSocket from 'ws';
import type { Logger } from '../log.js';
import { LogRing } from './log.js';
import {
  CloseCode,
  parseMessage,
  type GatewayToSupervisor,
  type SupervisorToGateway,
  type WelcomeMessage,
} from '../protocol/control.js';
import { keepAlive } from '../relay/heartbeat.js';

export interface ControlClientOptions {
  /** The gateway URL (`http(s)://…`); dialed as `ws(s)://…/v1/supervisor/session`. */
  endpoint: string;
  sandboxId: string;
  token: string;
  version: string;
  capabilities: string[];
  log: Logger;
  /** Liveness before the first welcome tells us the gateway's settings. */
  keepaliveIntervalMs?: number;
  keepaliveTimeoutMs?: number;
  onWelcome: (welcome: WelcomeMessage) => void;
  onMessage: (message: GatewayToSupervisor) => void;
  /**
   * The gateway refused the session as it does not know this sandbox (401
   * for an unknown token, 404): the client stops dialing, then this is called.
   */
  onUnknown?: (status: number) => void;
}

const BACKOFF_START_MS = 100;
const BACKOFF_MAX_MS = 5000;

/** The UTF-8 text of `{ type: 'log', lines }` for the lines held in `rings` (each already JSON), ring by ring. */
export function logMessageBytes(rings: LogRing[]): Buffer {
  return LogRing.joined(rings, '{"type":"log","lines":[', ']}');
}

/**
 * The supervisor's control session: dials the gateway, says hello, and
 * reconnects forever with exponential backoff and jitter (100 ms → 5 s). A
 * connection silent past the keepalive timeout is destroyed and redialed.
 */
export class ControlClient {
  readonly #o: ControlClientOptions;
  readonly #log: Logger;
  #ws: WebSocket | undefined;
  #timer: NodeJS.Timeout | undefined;
  #backoff = BACKOFF_START_MS;
  #closed = false;
  #connected = false;
  #intervalMs: number;
  #timeoutMs: number;

  constructor(opts: ControlClientOptions) {
    this.#o = opts;
    this.#log = opts.log.child({ component: 'control' });
    this.#intervalMs = opts.keepaliveIntervalMs ?? 10_000;
    this.#timeoutMs = opts.keepaliveTimeoutMs ?? 30_000;
  }

  /** True between a welcome and the connection's end. */
  get connected(): boolean {
    return this.#connected;
  }

  start(): void {
    this.#dial();
  }

  send(message: SupervisorToGateway): boolean {
    return this.#sendText(JSON.stringify(message));
  }

  /** `send({ type: 'log', lines })` for the lines held in `rings` (see `logMessageBytes`). */
  sendLogLines(rings: LogRing[]): boolean {
    return this.#sendText(logMessageBytes(rings));
  }

  /** Sends a message's JSON text (as a text frame, also when given as UTF-8 bytes). */
  #sendText(text: string | Buffer): boolean {
    const ws = this.#ws;
    if (!this.#connected || !ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(text, { binary: false });
    return true;
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#ws?.close(CloseCode.GOING_AWAY, 'supervisor shutting down');
    this.#ws?.terminate();
  }

  #dial(): void {
    if (this.#closed) return;
    const url = wsUrl(this.#o.endpoint, '/v1/supervisor/session');
    const ws = new WebSocket(url, {
      headers: { authorization: `Bearer ${this.#o.token}` },
      perMessageDeflate: false,
      handshakeTimeout: this.#timeoutMs,
    });
    this.#ws = ws;
    let stopKeepAlive: (() => void) | undefined;

    ws.on('upgrade', (res) => res.socket.setNoDelay(true));
    ws.on('open', () => {
      stopKeepAlive = keepAlive(ws, { intervalMs: this.#intervalMs, timeoutMs: this.#timeoutMs });
      ws.send(
        JSON.stringify({
          type: 'hello',
          sandboxId: this.#o.sandboxId,
          version: this.#o.version,
          capabilities: this.#o.capabilities,
        } satisfies SupervisorToGateway),
      );
    });
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const message = parseMessage<GatewayToSupervisor>(data.toString());
      if (!message) return;
      if (message.type === 'welcome') {
        this.#connected = true;
        this.#backoff = BACKOFF_START_MS;
        if (message.keepaliveIntervalMs !== this.#intervalMs || message.keepaliveTimeoutMs !== this.#timeoutMs) {
          this.#intervalMs = message.keepaliveIntervalMs;
          this.#timeoutMs = message.keepaliveTimeoutMs ?? this.#timeoutMs;
          stopKeepAlive?.();
          stopKeepAlive = keepAlive(ws, { intervalMs: this.#intervalMs, timeoutMs: this.#timeoutMs });
        }
        this.#log.info({ sessionId: message.sessionId }, 'session established');
        this.#o.onWelcome(message);
        return;
      }
      this.#o.onMessage(message);
    });
    ws.on('unexpected-response', (_req, res) => {
      const status = res.statusCode ?? 0;
      this.#log.warn({ status }, 'gateway refused the session');
      res.resume();
      ws.terminate();
      if ((status === 401 || status === 404) && this.#o.onUnknown) {
        this.close();
        this.#o.onUnknown(status);
      }
    });
    ws.on('error', (err) => this.#log.debug({ err }, 'control connection error'));
    ws.on('close', (code, reason) => {
      stopKeepAlive?.();
      const wasConnected = this.#connected;
      this.#connected = false;
      if (this.#ws === ws) this.#ws = undefined;
      if (wasConnected) this.#log.warn({ code, reason: reason.toString() }, 'session lost; reconnecting');
      this.#schedule();
    });
  }

  #schedule(): void {
    if (this.#closed) return;
    // Full jitter over the upper half: spreads a fleet's reconnects after a gateway restart.
    const delay = this.#backoff / 2 + Math.random() * (this.#backoff / 2);
    this.#backoff = Math.min(this.#backoff * 2, BACKOFF_MAX_MS);
    this.#timer = setTimeout(() => this.#dial(), delay);
  }
}

/** `http://h:p` + path → `ws://h:p/path` (https → wss); `unix:/sock` + path → `ws+unix:///sock:/path`. */
export function wsUrl(endpoint: string, path: string): string {
  if (endpoint.startsWith('unix:')) return `ws+unix://${endpoint.slice('unix:'.length)}:${path}`;
  const url = new URL(path, endpoint.endsWith('/') ? endpoint : `${endpoint}/`);
  url.pathname = `${new URL(endpoint).pathname.replace(/\/$/, '')}${path}`;
  url.protocol = url.protocol === 'https:' || url.protocol === 'wss:' ? 'wss:' : 'ws:';
  return url.toString();
}

/**
 * Whether WebSocket frames to `endpoint` need random masking keys. Masking
 * (RFC 6455 §10.3) keeps payload bytes, here a sandbox's own output, from
 * reading as HTTP to an intermediary that does not understand the upgrade.
 * Over TLS, loopback or a Unix socket no such intermediary sees the bytes, so relays there
 * send a zero key, which `ws` skips on both ends (one copy and one XOR pass
 * less per byte). Everywhere else keys stay random.
 */
export function needsMasking(endpoint: string): boolean {
  if (endpoint.startsWith('unix:')) return false;
  const url = new URL(endpoint);
  if (url.protocol === 'https:' || url.protocol === 'wss:') return false;
  const host = url.hostname.replace(/^\[|\]$/g, '');
  return !(host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host));
}

import { EventEmitter, setMaxListeners } from 'node:events';
import type { WebSocket } from 'ws';
import type { Logger } from '../log.js';
import { CloseCode, parseMessage, type GatewayToSupervisor, type SupervisorToGateway } from '../protocol/control.js';
import { keepAlive } from './heartbeat.js';
import type { RegisteredSession } from './sessions.js';

export interface SupervisorSessionOptions {
  ws: WebSocket;
  sandboxId: string;
  sessionId: string;
  log: Logger;
  keepaliveIntervalMs: number;
  keepaliveTimeoutMs: number;
}

interface SessionEvents {
  message: [message: SupervisorToGateway];
}

/**
 * The gateway's end of one supervisor control connection. Its `signal`
 * aborts when the session ends (close, keepalive timeout, superseded), so
 * everything riding the session (relays, waiters) ends with it.
 */
export class SupervisorSession extends EventEmitter<SessionEvents> implements RegisteredSession {
  readonly sandboxId: string;
  readonly sessionId: string;
  readonly #ws: WebSocket;
  readonly #log: Logger;
  readonly #abort = new AbortController();

  constructor(opts: SupervisorSessionOptions) {
    super();
    this.sandboxId = opts.sandboxId;
    this.sessionId = opts.sessionId;
    this.#ws = opts.ws;
    this.#log = opts.log;
    // Every relay and waiter riding this session listens on its signal.
    setMaxListeners(0, this.#abort.signal);
    const stop = keepAlive(opts.ws, {
      intervalMs: opts.keepaliveIntervalMs,
      timeoutMs: opts.keepaliveTimeoutMs,
      onDead: () => this.#log.warn({}, 'supervisor session silent past the keepalive timeout; terminated'),
    });
    opts.ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      const message = parseMessage<SupervisorToGateway>(data.toString());
      if (message) this.emit('message', message);
    });
    opts.ws.once('close', (code, reason) => {
      stop();
      this.#abort.abort(new Error(`session closed (${code} ${reason.toString()})`));
    });
  }

  get signal(): AbortSignal {
    return this.#abort.signal;
  }

  get open(): boolean {
    return !this.#abort.signal.aborted;
  }

  send(message: GatewayToSupervisor): boolean {
    if (this.#ws.readyState !== this.#ws.OPEN) return false;
    this.#ws.send(JSON.stringify(message));
    return true;
  }

  close(code: number = CloseCode.NORMAL, reason = ''): void {
    if (this.#ws.readyState === this.#ws.CLOSED) return;
    this.#ws.close(code, reason);
    // A peer that never answers the close handshake must not hold the socket.
    setTimeout(() => this.#ws.terminate(), 1000).unref();
  }
}

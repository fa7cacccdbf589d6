import { randomBytes } from 'node:crypto';
import type { WebSocket } from 'ws';
import type { Logger } from '../log.js';
import { CloseCode, parseMessage, type HelloMessage, type SupervisorToGateway } from '../protocol/control.js';
import { SupervisorSession } from './control.js';
import type { SessionRegistry } from './sessions.js';

export interface AcceptOptions {
  /** The sandbox the bearer token belongs to (already authenticated). */
  sandboxId: string;
  policy: unknown;
  policyVersion: number;
  sessions: SessionRegistry<SupervisorSession>;
  log: Logger;
  keepaliveIntervalMs: number;
  keepaliveTimeoutMs: number;
  onMessage: (session: SupervisorSession, message: SupervisorToGateway) => void;
}

/**
 * Runs the control-channel handshake on an authenticated WebSocket: the
 * supervisor's `hello` must name the token's own sandbox; the session is then
 * registered (superseding any older one) and welcomed.
 */
export function acceptSupervisorSession(ws: WebSocket, opts: AcceptOptions): void {
  const log = opts.log.child({ component: 'session', sandboxId: opts.sandboxId });
  const helloTimer = setTimeout(() => {
    log.warn({}, 'no hello from the supervisor in time');
    ws.close(CloseCode.UNAUTHENTICATED, 'hello expected');
    setTimeout(() => ws.terminate(), 1000).unref();
  }, opts.keepaliveTimeoutMs).unref();
  ws.once('close', () => clearTimeout(helloTimer));

  ws.once('message', (data, isBinary) => {
    clearTimeout(helloTimer);
    const hello = isBinary ? null : parseMessage<HelloMessage>(data.toString());
    if (!hello || hello.type !== 'hello') {
      ws.close(CloseCode.UNAUTHENTICATED, 'hello expected');
      return;
    }
    if (hello.sandboxId !== opts.sandboxId) {
      log.warn({ claimed: String(hello.sandboxId).slice(0, 64) }, 'supervisor said hello as another sandbox; refused');
      ws.close(CloseCode.PERMISSION_DENIED, 'token does not belong to that sandbox');
      return;
    }
    const sessionId = `ses_${randomBytes(8).toString('hex')}`;
    const session = new SupervisorSession({
      ws,
      sandboxId: opts.sandboxId,
      sessionId,
      log: log.child({ sessionId }),
      keepaliveIntervalMs: opts.keepaliveIntervalMs,
      keepaliveTimeoutMs: opts.keepaliveTimeoutMs,
    });
    session.on('message', (message) => opts.onMessage(session, message));
    ws.once('close', (code) => {
      if (opts.sessions.removeIfCurrent(opts.sandboxId, sessionId)) {
        log.info({ sessionId, code }, 'supervisor session ended');
      }
    });
    session.send({
      type: 'welcome',
      sessionId,
      keepaliveIntervalMs: opts.keepaliveIntervalMs,
      keepaliveTimeoutMs: opts.keepaliveTimeoutMs,
      policy: opts.policy,
      policyVersion: opts.policyVersion,
    });
    if (ws.readyState !== ws.OPEN) return;
    opts.sessions.register(session);
    log.info({ sessionId, version: String(hello.version).slice(0, 32) }, 'supervisor session connected');
  });
}

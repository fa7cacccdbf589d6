import type { IncomingMessage } from 'node:http';
import type WebSocket from 'ws';
import { OpenShellApiError, OpenShellConnectionError } from '../client/index.js';
import type { Context } from './context.js';

/**
 * Waits until a WebSocket to the gateway is open. A refused upgrade becomes
 * an {@link OpenShellApiError} from the error envelope. Attach 'message'
 * listeners before calling this: frames sent right after the upgrade arrive
 * with the 101 and are emitted before an awaiting caller resumes.
 */
export async function waitOpen(ctx: Context, ws: WebSocket): Promise<void> {
  if (ws.readyState === ws.OPEN) return;
  await new Promise<void>((resolve, reject) => {
    const cleanup = () => {
      ws.off('open', onOpen);
      ws.off('error', onError);
      ws.off('unexpected-response', onResponse);
    };
    const onOpen = () => {
      cleanup();
      resolve();
    };
    const onError = (err: Error) => {
      cleanup();
      const code = (err as NodeJS.ErrnoException).code ?? 'ECONNECT';
      reject(new OpenShellConnectionError(ctx.gateway, code, (err as NodeJS.ErrnoException).code ?? err.message, { cause: err }));
    };
    const onResponse = (_req: unknown, res: IncomingMessage) => {
      cleanup();
      ws.on('error', () => undefined); // terminate() during the handshake reports an error we already have

      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', () => undefined);
      res.on('end', () => {
        reject(OpenShellApiError.fromBody(res.statusCode ?? 0, res.statusMessage ?? '', Buffer.concat(chunks).toString('utf8')));
        ws.terminate();
      });
    };
    ws.on('open', onOpen);
    ws.on('error', onError);
    ws.on('unexpected-response', onResponse);
  });
}

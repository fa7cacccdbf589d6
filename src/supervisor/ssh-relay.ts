import { connect } from 'node:net';
import { pipeline } from 'node:stream/promises';
import { createWebSocketStream, type WebSocket } from 'ws';

/**
 * Bridges an `ssh` relay WebSocket (binary frames of a raw SSH byte stream) to
 * the supervisor's SSH Unix socket. Resolves when either side ends; a failure
 * closes the socket with 1011 rather than leaving a silent 1006.
 */
export async function bridgeSshRelay(ws: WebSocket, socketPath: string): Promise<void> {
  const stream = createWebSocketStream(ws);
  const sock = connect(socketPath);
  try {
    await pipeline(stream, sock, stream);
  } catch (err) {
    if (ws.readyState === ws.OPEN) ws.close(1011, 'ssh relay failed');
    sock.destroy();
    throw err;
  }
}

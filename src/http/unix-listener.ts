import http from 'node:http';
import type net from 'node:net';
import { chmod, lstat, unlink } from 'node:fs/promises';
import type { FastifyInstance } from 'fastify';

/** Longest Unix socket path Linux takes (`sun_path` is 108 bytes, NUL included). */
export const MAX_UNIX_PATH = 107;

/** Only the supervisor's routes are served on the socket. */
const SUPERVISOR_PREFIX = '/v1/supervisor/';

export interface UnixListener {
  readonly path: string;
  /** Stops listening, destroys what is still connected, removes the socket file. Idempotent. */
  close(): Promise<void>;
}

/**
 * A second way in for the supervisors of sandboxes on this host (process
 * driver): a Unix socket, mode 0600, carrying HTTP/1.1 and WebSocket upgrades
 * into the same Fastify routes and hooks as the TCP port. A relay over it
 * costs the kernel less per byte than loopback TCP. Only `/v1/supervisor/…`
 * is served; anything else is a 404.
 */
export async function listenUnix(app: FastifyInstance, path: string): Promise<UnixListener> {
  if (path.length > MAX_UNIX_PATH) throw new RangeError(`unix socket path is longer than ${MAX_UNIX_PATH} bytes: ${path}`);
  await removeStaleSocket(path);
  const sockets = new Set<net.Socket>();
  const server = http.createServer({ noDelay: true });
  server.on('connection', (socket: net.Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (!req.url?.startsWith(SUPERVISOR_PREFIX)) return notFound(res);
    app.routing(req, res);
  });
  server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    if (!req.url?.startsWith(SUPERVISOR_PREFIX)) {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    // @fastify/websocket routes upgrades it sees on the main server.
    app.server.emit('upgrade', req, socket, head);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // The socket is born 0600, so there is no window in which others may connect.
    // listen() binds synchronously, so the umask is back before anything else runs.
    const oldMask = process.umask(0o177);
    try {
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    } finally {
      process.umask(oldMask);
    }
  });
  await chmod(path, 0o600);
  let closing: Promise<void> | null = null;
  return {
    path,
    close() {
      closing ??= (async () => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        for (const socket of sockets) socket.destroy();
        await closed;
        await unlink(path).catch(() => undefined);
      })();
      return closing;
    },
  };
}

function notFound(res: http.ServerResponse): void {
  const body = JSON.stringify({ error: { code: 'NOT_FOUND', message: 'only the supervisor routes are served on this socket' } });
  res.writeHead(404, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/** A socket file left by a gateway that died: remove it (but never a file that is not a socket). */
async function removeStaleSocket(path: string): Promise<void> {
  const st = await lstat(path).catch(() => null);
  if (!st) return;
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket`);
  await unlink(path);
}

import http from 'node:http';
import http2 from 'node:http2';
import type net from 'node:net';
import { Duplex } from 'node:stream';

/** RFC 9113 §3.4: what an HTTP/2 client with prior knowledge sends first. */
const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

/** How long an accepted connection may stay silent before we know its protocol. */
const DEFAULT_SNIFF_TIMEOUT_MS = 60_000;

/** The request handler Fastify passes to its `serverFactory`: serves HTTP/1.1 and HTTP/2 compat requests alike. */
export type RequestHandler = (req: http.IncomingMessage, res: http.ServerResponse) => void;

/**
 * Shape of Fastify's `serverFactory` option (structurally compatible with
 * `FastifyServerFactory`). With TLS the server is really an
 * `http2.Http2SecureServer`; it offers everything Fastify and
 * @fastify/websocket use from it (`listen`, `close`, `address`, `upgrade`,
 * `closeAllConnections`).
 */
export type ServerFactory = (handler: RequestHandler, fastifyOpts: Record<string, unknown>) => http.Server;

export interface ServerFactoryOptions {
  /** PEM certificate and key: HTTPS with ALPN (h2, http/1.1) instead of cleartext. */
  tls?: { cert: Buffer; key: Buffer };
  /** Silent connections whose protocol is still unknown are destroyed after this long. */
  sniffTimeoutMs?: number;
}

/**
 * A Fastify `serverFactory` serving HTTP/1.1 (with WebSocket upgrades) and
 * HTTP/2 on one port: cleartext sniffs the h2c prior-knowledge preface, TLS
 * negotiates with ALPN. `close()` also closes HTTP/2 sessions gracefully and
 * `closeAllConnections()` (Fastify's `forceCloseConnections: true`) destroys
 * them; upgraded sockets are left to their WebSocket owners, as in Node.
 */
export function createServerFactory(opts: ServerFactoryOptions = {}): ServerFactory {
  return (handler, fastifyOpts) => {
    const server = opts.tls ? createTlsServer(handler, opts.tls, fastifyOpts) : createCleartextServer(handler, opts, fastifyOpts);
    applyHttp1Options(server, fastifyOpts);
    return server;
  };
}

function applyHttp1Options(server: http.Server, fastifyOpts: Record<string, unknown>): void {
  const num = (key: string): number | undefined =>
    typeof fastifyOpts[key] === 'number' ? (fastifyOpts[key] as number) : undefined;
  const keepAliveTimeout = num('keepAliveTimeout');
  if (keepAliveTimeout !== undefined) server.keepAliveTimeout = keepAliveTimeout;
  const requestTimeout = num('requestTimeout');
  if (requestTimeout !== undefined) server.requestTimeout = requestTimeout;
  const maxRequestsPerSocket = num('maxRequestsPerSocket');
  if (maxRequestsPerSocket !== undefined && maxRequestsPerSocket > 0) server.maxRequestsPerSocket = maxRequestsPerSocket;
  const connectionTimeout = num('connectionTimeout');
  if (connectionTimeout !== undefined) server.setTimeout(connectionTimeout);
}

/** Tracks HTTP/2 sessions so close() can end them gracefully and closeAllConnections() can destroy them. */
function trackSessions(h2: http2.Http2Server | http2.Http2SecureServer, fastifyOpts: Record<string, unknown>) {
  const sessions = new Set<http2.ServerHttp2Session>();
  const sessionTimeout = typeof fastifyOpts.http2SessionTimeout === 'number' ? fastifyOpts.http2SessionTimeout : 72_000;
  h2.on('session', (session: http2.ServerHttp2Session) => {
    sessions.add(session);
    session.once('close', () => sessions.delete(session));
    if (sessionTimeout > 0) session.setTimeout(sessionTimeout, () => session.close());
  });
  return {
    closeGracefully(): void {
      for (const session of sessions) if (!session.closed) session.close();
    },
    destroyAll(): void {
      for (const session of sessions) session.destroy();
      sessions.clear();
    },
  };
}

function createCleartextServer(
  handler: RequestHandler,
  opts: ServerFactoryOptions,
  fastifyOpts: Record<string, unknown>,
): http.Server {
  const server = http.createServer(handler);
  const h2 = http2.createServer(handler as unknown as (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void);
  const h2Sessions = trackSessions(h2, fastifyOpts);
  // http2 wraps our Duplex in a handle-less socket that cannot ask the kernel
  // for addresses; hand them over so request.ip and logs see the peer. The
  // session is created synchronously inside the 'connection' emit.
  let accepted: net.Socket | null = null;
  h2.on('session', (session: http2.ServerHttp2Session) => {
    if (!accepted) return;
    const inner = session.socket as net.Socket & { _peername?: object; _sockname?: object };
    inner._peername = { address: accepted.remoteAddress, family: accepted.remoteFamily, port: accepted.remotePort };
    inner._sockname = { address: accepted.localAddress, family: accepted.localFamily, port: accepted.localPort };
  });
  const sniffing = new Set<net.Socket>();
  const sniffTimeoutMs = opts.sniffTimeoutMs ?? DEFAULT_SNIFF_TIMEOUT_MS;

  // Take over 'connection': we decide per socket which server parses it.
  const http1Listeners = server.listeners('connection') as ((socket: net.Socket) => void)[];
  server.removeAllListeners('connection');
  const toHttp1 = (socket: net.Socket): void => {
    for (const listener of http1Listeners) listener.call(server, socket);
  };

  server.on('connection', (socket: net.Socket) => {
    socket.setNoDelay(true);
    sniffing.add(socket);
    let head: Buffer = Buffer.alloc(0);
    const timer = setTimeout(() => socket.destroy(), sniffTimeoutMs);
    timer.unref();
    const done = (): void => {
      clearTimeout(timer);
      sniffing.delete(socket);
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.off('error', onError);
    };
    const onClose = (): void => done();
    const onError = (): void => void socket.destroy();
    const onData = (chunk: Buffer): void => {
      // Stop the flow at once: later chunks must stay buffered, in order.
      socket.pause();
      head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
      const n = Math.min(head.length, H2_PREFACE.length);
      const isPrefacePrefix = head.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
      if (isPrefacePrefix && head.length < H2_PREFACE.length) {
        socket.resume();
        return;
      }
      done();
      if (isPrefacePrefix) {
        accepted = socket;
        try {
          h2.emit('connection', new ReplaySocket(socket, head));
        } finally {
          accepted = null;
        }
      } else {
        // The HTTP/1 parser consumes the native handle from now on, but reads
        // what is already buffered in JS first: the unshifted head, then any
        // chunks that arrived while paused.
        socket.unshift(head);
        toHttp1(socket);
        socket.resume();
      }
    };
    socket.on('data', onData);
    socket.on('close', onClose);
    socket.on('error', onError);
  });

  const destroySniffing = (): void => {
    for (const socket of sniffing) socket.destroy();
    sniffing.clear();
  };

  const close = server.close.bind(server);
  server.close = function (callback?: (err?: Error) => void) {
    close(callback);
    destroySniffing();
    h2Sessions.closeGracefully();
    return this;
  };
  const closeAllConnections = server.closeAllConnections.bind(server);
  server.closeAllConnections = () => {
    closeAllConnections();
    destroySniffing();
    h2Sessions.destroyAll();
  };
  const closeIdleConnections = server.closeIdleConnections.bind(server);
  server.closeIdleConnections = () => {
    closeIdleConnections();
    destroySniffing();
  };
  return server;
}

function createTlsServer(
  handler: RequestHandler,
  tls: { cert: Buffer; key: Buffer },
  fastifyOpts: Record<string, unknown>,
): http.Server {
  const h2 = http2.createSecureServer(
    { cert: tls.cert, key: tls.key, allowHTTP1: true },
    handler as unknown as (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void,
  );
  const h2Sessions = trackSessions(h2, fastifyOpts);
  // TCP connections still in the TLS handshake belong to neither HTTP/1.1 nor
  // HTTP/2 bookkeeping; without this a silent one holds close() for the
  // whole handshake timeout.
  const handshaking = new Map<string, net.Socket>();
  const peerKey = (socket: net.Socket): string => `${socket.remoteAddress}|${socket.remotePort}`;
  h2.on('connection', (socket: net.Socket) => {
    socket.setNoDelay(true);
    const key = peerKey(socket);
    handshaking.set(key, socket);
    socket.once('close', () => {
      if (handshaking.get(key) === socket) handshaking.delete(key);
    });
  });
  h2.prependListener('secureConnection', (socket: net.Socket) => handshaking.delete(peerKey(socket)));
  const destroyHandshaking = (): void => {
    for (const socket of handshaking.values()) socket.destroy();
    handshaking.clear();
  };

  // With allowHTTP1, Node tracks HTTP/1.1 connections on the http2 server the
  // way http.Server does (upgraded sockets leave the list), and its close()
  // already closes the idle ones: reuse http.Server's methods for the rest.
  const server = h2 as unknown as http.Server;
  const close = h2.close.bind(h2);
  server.close = function (callback?: (err?: Error) => void) {
    close(callback);
    destroyHandshaking();
    h2Sessions.closeGracefully();
    return this;
  };
  server.closeAllConnections = () => {
    http.Server.prototype.closeAllConnections.call(server);
    destroyHandshaking();
    h2Sessions.destroyAll();
  };
  server.closeIdleConnections = () => {
    http.Server.prototype.closeIdleConnections.call(server);
  };
  return server;
}

/**
 * The accepted socket as a JS Duplex that first replays the bytes we sniffed.
 * Node's http2 reads a native handle directly, so `socket.unshift()` would be
 * lost on it; a handle-less Duplex makes http2 wrap it and read through JS.
 */
class ReplaySocket extends Duplex {
  readonly #socket: net.Socket;

  constructor(socket: net.Socket, head: Buffer) {
    super({ allowHalfOpen: false });
    this.#socket = socket;
    this.push(head);
    socket.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) socket.pause();
    });
    socket.on('end', () => this.push(null));
    socket.on('error', (err) => this.destroy(err));
    socket.on('close', () => this.destroy());
    socket.on('timeout', () => this.emit('timeout'));
  }

  get remoteAddress(): string | undefined {
    return this.#socket.remoteAddress;
  }
  get remotePort(): number | undefined {
    return this.#socket.remotePort;
  }
  get remoteFamily(): string | undefined {
    return this.#socket.remoteFamily;
  }
  get localAddress(): string | undefined {
    return this.#socket.localAddress;
  }
  get localPort(): number | undefined {
    return this.#socket.localPort;
  }

  setNoDelay(noDelay?: boolean): this {
    this.#socket.setNoDelay(noDelay);
    return this;
  }
  setKeepAlive(enable?: boolean, initialDelay?: number): this {
    this.#socket.setKeepAlive(enable, initialDelay);
    return this;
  }
  setTimeout(ms: number, callback?: () => void): this {
    this.#socket.setTimeout(ms);
    if (callback) this.once('timeout', callback);
    return this;
  }

  override _read(): void {
    this.#socket.resume();
  }
  override _write(chunk: Buffer, encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.#socket.write(chunk, encoding, callback);
  }
  override _writev(chunks: { chunk: Buffer }[], callback: (err?: Error | null) => void): void {
    this.#socket.cork();
    for (let i = 0; i < chunks.length - 1; i++) this.#socket.write(chunks[i]!.chunk);
    this.#socket.write(chunks[chunks.length - 1]!.chunk, callback);
    this.#socket.uncork();
  }
  override _final(callback: (err?: Error | null) => void): void {
    this.#socket.end(callback);
  }
  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.#socket.destroy(err ?? undefined);
    callback(err);
  }
}

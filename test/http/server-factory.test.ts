import t, { type Test } from 'tap';
import Fastify, { type FastifyInstance } from 'fastify';
import websocket from '@fastify/websocket';
import http from 'node:http';
import https from 'node:https';
import http2 from 'node:http2';
import net from 'node:net';
import { Duplex } from 'node:stream';
import { once } from 'node:events';
import { setTimeout as delay } from 'node:timers/promises';
import WebSocket from 'ws';
import { createServerFactory } from '../../src/http/server-factory.js';
import { selfSignedCert } from '../helpers/tls.js';

const tls = selfSignedCert();

interface Built {
  app: FastifyInstance;
  port: number;
  /** Resolves when a request reached the never-answering `/hang` route. */
  hanging: Promise<void>;
}

async function buildApp(t: Test, opts: { tls?: typeof tls; sniffTimeoutMs?: number } = {}): Promise<Built> {
  const app = Fastify({ serverFactory: createServerFactory(opts), forceCloseConnections: true });
  await app.register(websocket);
  app.get('/hello', async (request) => ({ hello: 'world', httpVersion: request.raw.httpVersion, ip: request.ip }));
  let hung!: () => void;
  const hanging = new Promise<void>((resolve) => (hung = resolve));
  app.get('/hang', () => {
    hung();
    return new Promise(() => {});
  });
  app.get('/echo', { websocket: true }, (socket) => {
    socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }));
  });
  await app.listen({ port: 0, host: '127.0.0.1' });
  t.teardown(() => app.close());
  return { app, port: (app.server.address() as net.AddressInfo).port, hanging };
}

function h2Get(session: http2.ClientHttp2Session, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = session.request({ ':path': path });
    let status = 0;
    let body = '';
    req.setEncoding('utf8');
    req.on('response', (headers) => (status = Number(headers[':status'])));
    req.on('data', (chunk: string) => (body += chunk));
    req.on('end', () => resolve({ status, body }));
    req.on('error', reject);
    req.end();
  });
}

function h1Get(url: string, options: https.RequestOptions = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const get = url.startsWith('https:') ? https.get : http.get;
    const req = get(url, { ...options, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
  });
}

async function wsEcho(t: Test, url: string, options: WebSocket.ClientOptions = {}): Promise<WebSocket> {
  const ws = new WebSocket(url, options);
  t.teardown(() => ws.terminate());
  await once(ws, 'open');
  ws.send('echo me');
  const [data] = (await once(ws, 'message')) as [Buffer];
  t.equal(data.toString(), 'echo me', 'the WebSocket echoes');
  return ws;
}

function h2Connect(t: Test, authority: string, options: http2.SecureClientSessionOptions = {}): http2.ClientHttp2Session {
  const session = http2.connect(authority, options);
  session.on('error', () => {});
  t.teardown(() => session.destroy());
  return session;
}

t.test('cleartext: h2c, HTTP/1.1 and WebSocket on one port', async (t) => {
  const { port } = await buildApp(t);

  const session = h2Connect(t, `http://127.0.0.1:${port}`);
  const h2 = await h2Get(session, '/hello');
  t.equal(h2.status, 200);
  t.same(JSON.parse(h2.body), { hello: 'world', httpVersion: '2.0', ip: '127.0.0.1' }, 'h2c prior knowledge');

  const h1 = await h1Get(`http://127.0.0.1:${port}/hello`);
  t.equal(h1.status, 200);
  t.same(JSON.parse(h1.body), { hello: 'world', httpVersion: '1.1', ip: '127.0.0.1' }, 'HTTP/1.1');

  const res = await fetch(`http://127.0.0.1:${port}/hello`);
  t.same(await res.json(), { hello: 'world', httpVersion: '1.1', ip: '127.0.0.1' }, 'fetch (undici)');

  await wsEcho(t, `ws://127.0.0.1:${port}/echo`);
});

/** A handle-less client transport that splits its first write, so the server sees a partial preface. */
class SplitFirstWrite extends Duplex {
  #socket: net.Socket;
  #first = true;
  constructor(socket: net.Socket) {
    super();
    this.#socket = socket;
    socket.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) socket.pause();
    });
    socket.on('end', () => this.push(null));
    socket.on('close', () => this.destroy());
  }
  override _read(): void {
    this.#socket.resume();
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, callback: (err?: Error | null) => void): void {
    if (!this.#first) {
      this.#socket.write(chunk, callback);
      return;
    }
    this.#first = false;
    this.#socket.write(chunk.subarray(0, 5));
    setTimeout(() => {
      this.#socket.write(chunk.subarray(5, 20));
      setTimeout(() => this.#socket.write(chunk.subarray(20), callback), 30);
    }, 30);
  }
  override _final(callback: () => void): void {
    this.#socket.end(callback);
  }
  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.#socket.destroy();
    callback(err);
  }
}

t.test('cleartext: a preface split over several packets is still h2c', async (t) => {
  const { port } = await buildApp(t);
  const socket = net.connect({ host: '127.0.0.1', port });
  socket.setNoDelay(true);
  await once(socket, 'connect');
  const session = h2Connect(t, `http://127.0.0.1:${port}`, { createConnection: () => new SplitFirstWrite(socket) });
  const res = await h2Get(session, '/hello');
  t.equal(res.status, 200);
  t.equal(JSON.parse(res.body).httpVersion, '2.0');
});

t.test('cleartext: HTTP/1.1 bytes split and pipelined reach the HTTP/1 parser intact', async (t) => {
  const { port } = await buildApp(t);
  const socket = net.connect({ host: '127.0.0.1', port });
  socket.setNoDelay(true);
  t.teardown(() => socket.destroy());
  await once(socket, 'connect');
  let received = '';
  socket.setEncoding('latin1');
  socket.on('data', (chunk: string) => (received += chunk));
  const request = 'GET /hello HTTP/1.1\r\nHost: x\r\n\r\n';
  socket.write('P'); // looks like the start of the h2 preface, then is not
  await delay(30);
  socket.write('UT');
  await delay(30);
  socket.write(' /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n' + request + request.replace('\r\n\r\n', '\r\nConnection: close\r\n\r\n'));
  await once(socket, 'end');
  const statuses = received.match(/HTTP\/1\.1 \d+/g);
  t.same(statuses, ['HTTP/1.1 404', 'HTTP/1.1 200', 'HTTP/1.1 200'], 'three responses in order');
});

t.test('TLS: h2 and HTTP/1.1 by ALPN, and WebSocket, on one port', async (t) => {
  const { port } = await buildApp(t, { tls });

  const session = h2Connect(t, `https://127.0.0.1:${port}`, { ca: tls.cert });
  const h2 = await h2Get(session, '/hello');
  t.equal(h2.status, 200);
  t.same(JSON.parse(h2.body), { hello: 'world', httpVersion: '2.0', ip: '127.0.0.1' }, 'h2 over TLS');

  const h1 = await h1Get(`https://127.0.0.1:${port}/hello`, { ca: tls.cert });
  t.equal(h1.status, 200);
  t.same(JSON.parse(h1.body), { hello: 'world', httpVersion: '1.1', ip: '127.0.0.1' }, 'HTTP/1.1 over TLS');

  await wsEcho(t, `wss://127.0.0.1:${port}/echo`, { ca: tls.cert });
});

for (const mode of ['cleartext', 'TLS'] as const) {
  t.test(`${mode}: app.close() is prompt with an h2 session, a hung h2 stream and a WebSocket open`, async (t) => {
    const { app, port, hanging } = await buildApp(t, mode === 'TLS' ? { tls } : {});
    const secure = mode === 'TLS';
    const session = h2Connect(t, `${secure ? 'https' : 'http'}://127.0.0.1:${port}`, secure ? { ca: tls.cert } : {});
    t.equal((await h2Get(session, '/hello')).status, 200);
    const hung = session.request({ ':path': '/hang' });
    hung.on('error', () => {});
    hung.end();
    await hanging;

    // a keep-alive HTTP/1.1 connection left idle
    const agent = secure ? new https.Agent({ keepAlive: true, ca: tls.cert }) : new http.Agent({ keepAlive: true });
    t.teardown(() => agent.destroy());
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      (secure ? https : http).get(`${secure ? 'https' : 'http'}://127.0.0.1:${port}/hello`, { agent }, resolve).on('error', reject);
    });
    res.resume();
    await once(res, 'end');

    const ws = await wsEcho(t, `${secure ? 'wss' : 'ws'}://127.0.0.1:${port}/echo`, secure ? { ca: tls.cert } : {});
    const wsClosed = once(ws, 'close');
    const sessionClosed = once(session, 'close');

    const started = Date.now();
    await app.close();
    const elapsed = Date.now() - started;
    t.ok(elapsed < 3000, `app.close() took ${elapsed} ms`);
    const [code] = (await wsClosed) as [number];
    t.not(code, 1006, 'the WebSocket got a close frame, not a dropped socket');
    await sessionClosed;
    t.pass('the h2 session closed');
  });
}

t.test('cleartext: a connection that never speaks is dropped and does not hold app.close()', async (t) => {
  const { app, port } = await buildApp(t, { sniffTimeoutMs: 200 });
  const silent = net.connect({ host: '127.0.0.1', port });
  t.teardown(() => silent.destroy());
  await once(silent, 'connect');
  await once(silent, 'close');
  t.pass('dropped after the sniff timeout');

  const again = net.connect({ host: '127.0.0.1', port });
  t.teardown(() => again.destroy());
  await once(again, 'connect');
  const closed = once(again, 'close');
  const started = Date.now();
  await app.close();
  t.ok(Date.now() - started < 1000, 'app.close() did not wait for it');
  await closed;
});

t.test('TLS: a connection stuck before its handshake does not hold app.close()', async (t) => {
  const { app, port } = await buildApp(t, { tls });
  const silent = net.connect({ host: '127.0.0.1', port });
  t.teardown(() => silent.destroy());
  await once(silent, 'connect');
  const closed = once(silent, 'close');
  const started = Date.now();
  await app.close();
  t.ok(Date.now() - started < 1000, 'app.close() did not wait for the handshake timeout');
  await closed;
});

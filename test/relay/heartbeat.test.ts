import t, { type Test } from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { setTimeout as delay } from 'node:timers/promises';
import WebSocket, { WebSocketServer } from 'ws';
import { keepAlive } from '../../src/relay/heartbeat.js';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.js';

const INTERVAL = 200;
const TIMEOUT = 600;
const SLACK = 1000;

interface End {
  ws: WebSocket;
  /** Resolves with the ms from `since` to onDead. */
  dead: Promise<number>;
  stop: () => void;
}

interface Pair {
  proxy: TcpProxy;
  server: End;
  client: End;
  /** Set by the test just before it breaks the path. */
  mark(): void;
}

/** A ws server and a ws client on loopback, through the fault proxy, both under keepAlive. */
async function connectPair(t: Test, opts: { keepAliveOn?: boolean } = {}): Promise<Pair> {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await once(wss, 'listening');
  t.teardown(() => {
    for (const ws of wss.clients) ws.terminate();
    wss.close();
  });
  const proxy = await startTcpProxy({ host: '127.0.0.1', port: (wss.address() as net.AddressInfo).port });
  t.teardown(() => proxy.close());

  let since = 0;
  const track = (ws: WebSocket): End => {
    ws.on('error', () => {});
    let stop = (): void => {};
    const dead = new Promise<number>((resolve) => {
      if (opts.keepAliveOn === false) return;
      stop = keepAlive(ws, { intervalMs: INTERVAL, timeoutMs: TIMEOUT, onDead: () => resolve(Date.now() - since) });
    });
    return { ws, dead, stop: () => stop() };
  };

  const accepted = once(wss, 'connection') as Promise<[WebSocket]>;
  const clientWs = new WebSocket(`ws://127.0.0.1:${proxy.port}`);
  t.teardown(() => clientWs.terminate());
  const client = track(clientWs);
  await once(clientWs, 'open');
  const [serverWs] = await accepted;
  const server = track(serverWs);
  return { proxy, server, client, mark: () => (since = Date.now()) };
}

async function exchange(from: WebSocket, to: WebSocket, text: string): Promise<string> {
  const got = once(to, 'message') as Promise<[Buffer]>;
  from.send(text);
  const [data] = await got;
  return data.toString();
}

t.test('a black-holed path is detected on both ends within timeout + one interval', async (t) => {
  const { proxy, server, client, mark } = await connectPair(t);
  t.equal(await exchange(client.ws, server.ws, 'hi'), 'hi');

  const serverClosed = once(server.ws, 'close');
  const clientClosed = once(client.ws, 'close');
  mark();
  proxy.blackhole();

  const [serverMs, clientMs] = await Promise.all([server.dead, client.dead]);
  t.ok(serverMs <= TIMEOUT + SLACK, `server end declared dead after ${serverMs} ms`);
  t.ok(clientMs <= TIMEOUT + SLACK, `client end declared dead after ${clientMs} ms`);
  const [[serverCode], [clientCode]] = (await Promise.all([serverClosed, clientClosed])) as [[number], [number]];
  t.equal(serverCode, 1006, 'server end terminated without a close handshake');
  t.equal(clientCode, 1006, 'client end terminated without a close handshake');
  t.equal(proxy.connections, 1, 'the proxy never closed the pair: death was detected, not signalled');
});

t.test('a healthy but quiet connection stays up for several timeouts', async (t) => {
  const { server, client } = await connectPair(t);
  let died = false;
  void server.dead.then(() => (died = true));
  void client.dead.then(() => (died = true));

  await delay(TIMEOUT * 4);
  t.notOk(died, 'neither end declared the other dead');
  t.equal(server.ws.readyState, WebSocket.OPEN);
  t.equal(client.ws.readyState, WebSocket.OPEN);
  t.equal(await exchange(server.ws, client.ws, 'still here'), 'still here');
});

t.test('our own stall (event loop blocked past the timeout) does not count as the peer’s silence', async (t) => {
  const { server, client } = await connectPair(t);
  let died = false;
  void server.dead.then(() => (died = true));
  void client.dead.then(() => (died = true));
  t.equal(await exchange(client.ws, server.ws, 'before'), 'before');
  // Block this process (both ends and the proxy live here) for three timeouts, as a long GC or CPU starvation would.
  const until = performance.now() + TIMEOUT * 3;
  while (performance.now() < until) {
    // busy: nothing is read, no timer runs
  }
  await delay(TIMEOUT * 2);
  t.notOk(died, 'neither end declared the other dead');
  t.equal(await exchange(server.ws, client.ws, 'after'), 'after');
});

t.test('a peer that only pongs (no keepAlive of its own) keeps the other end alive', async (t) => {
  const { server, client } = await connectPair(t, { keepAliveOn: false });
  let died = false;
  const stop = keepAlive(server.ws, { intervalMs: INTERVAL, timeoutMs: TIMEOUT, onDead: () => (died = true) });
  t.teardown(stop);
  await delay(TIMEOUT * 3);
  t.notOk(died, 'pongs from ws auto-reply count as life');
  t.equal(client.ws.readyState, WebSocket.OPEN);
});

t.test('stop() ends tracking; closing the socket ends it too', async (t) => {
  const { proxy, server, client, mark } = await connectPair(t);
  client.stop();
  client.stop();
  server.stop();
  mark();
  proxy.blackhole();
  let died = false;
  void server.dead.then(() => (died = true));
  void client.dead.then(() => (died = true));
  await delay(TIMEOUT + 3 * INTERVAL);
  t.notOk(died, 'no onDead after stop()');
  t.equal(client.ws.readyState, WebSocket.OPEN, 'nothing terminated it');

  const other = await connectPair(t);
  const closed = once(other.server.ws, 'close');
  other.client.ws.close(1000, 'bye');
  await closed;
  t.equal(other.server.ws.readyState, WebSocket.CLOSED);
});

t.test('a client whose handshake is black-holed is terminated', async (t) => {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await once(wss, 'listening');
  t.teardown(() => wss.close());
  const proxy = await startTcpProxy({ host: '127.0.0.1', port: (wss.address() as net.AddressInfo).port });
  t.teardown(() => proxy.close());
  proxy.blackhole();

  const started = Date.now();
  const ws = new WebSocket(`ws://127.0.0.1:${proxy.port}`);
  const errored = new Promise<Error>((resolve) => ws.once('error', resolve));
  const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
  const dead = new Promise<number>((resolve) => {
    keepAlive(ws, { intervalMs: INTERVAL, timeoutMs: TIMEOUT, onDead: () => resolve(Date.now() - started) });
  });
  const ms = await dead;
  t.ok(ms <= TIMEOUT + SLACK, `declared dead after ${ms} ms`);
  t.match((await errored).message, /closed before the connection was established/, 'ws reports the aborted handshake');
  await closed;
  t.equal(ws.readyState, WebSocket.CLOSED);
});

t.test('rejects non-positive timings', async (t) => {
  const ws = new WebSocket('ws://127.0.0.1:1');
  ws.on('error', () => {});
  t.throws(() => keepAlive(ws, { intervalMs: 0, timeoutMs: 100 }), RangeError);
  t.throws(() => keepAlive(ws, { intervalMs: 100, timeoutMs: -1 }), RangeError);
  ws.terminate();
});

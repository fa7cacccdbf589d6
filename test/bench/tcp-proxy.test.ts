import t, { type Test } from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { setTimeout as delay } from 'node:timers/promises';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.js';

/** An echo server on loopback: the proxy's target. */
async function startEcho(t: Test): Promise<net.Server> {
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    socket.on('error', () => {});
    socket.pipe(socket);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => {
    server.close();
  });
  return server;
}

async function setup(t: Test): Promise<TcpProxy> {
  const echo = await startEcho(t);
  const proxy = await startTcpProxy({ host: '127.0.0.1', port: (echo.address() as net.AddressInfo).port });
  t.teardown(() => proxy.close());
  return proxy;
}

async function connect(t: Test, port: number): Promise<net.Socket> {
  const socket = net.connect({ host: '127.0.0.1', port });
  socket.setNoDelay(true);
  t.teardown(() => {
    socket.destroy();
  });
  await once(socket, 'connect');
  return socket;
}

async function roundTrip(socket: net.Socket, text: string): Promise<string> {
  let got = '';
  socket.write(text);
  while (got.length < text.length) {
    const [chunk] = (await once(socket, 'data')) as [Buffer];
    got += chunk.toString();
  }
  return got;
}

/** Resolves with what happened on the socket within `ms`: data, end, close, or nothing. */
async function watch(socket: net.Socket, ms: number): Promise<string[]> {
  const seen: string[] = [];
  const onData = (): void => void seen.push('data');
  const onEnd = (): void => void seen.push('end');
  const onClose = (): void => void seen.push('close');
  socket.on('data', onData).on('end', onEnd).on('close', onClose);
  await delay(ms);
  socket.off('data', onData).off('end', onEnd).off('close', onClose);
  return seen;
}

t.test('forwards both ways and counts live pairs', async (t) => {
  const proxy = await setup(t);
  const a = await connect(t, proxy.port);
  t.equal(await roundTrip(a, 'hello'), 'hello');
  const b = await connect(t, proxy.port);
  t.equal(await roundTrip(b, 'world'), 'world');
  t.equal(proxy.connections, 2);
  a.end();
  await once(a, 'close');
  while (proxy.connections !== 1) await delay(10);
  t.equal(proxy.connections, 1);
});

t.test('blackhole: data stops, nothing closes, new connections are held', async (t) => {
  const proxy = await setup(t);
  const a = await connect(t, proxy.port);
  t.equal(await roundTrip(a, 'ping'), 'ping');
  proxy.blackhole();
  a.write('lost');
  t.same(await watch(a, 400), [], 'no data, no end, no close on the established pair');
  t.equal(proxy.connections, 1, 'the black-holed pair is held open');

  const b = await connect(t, proxy.port);
  b.write('also lost');
  t.same(await watch(b, 300), [], 'a new connection is accepted but black-holed');

  proxy.restore();
  const c = await connect(t, proxy.port);
  t.equal(await roundTrip(c, 'back'), 'back', 'new connections forward after restore');
  a.write('still lost');
  t.same(await watch(a, 200), [], 'old pairs stay dead after restore');
});

t.test('resetAll: clients see ECONNRESET', async (t) => {
  const proxy = await setup(t);
  const a = await connect(t, proxy.port);
  t.equal(await roundTrip(a, 'x'), 'x');
  const errored = once(a, 'error');
  proxy.resetAll();
  const [err] = (await errored) as [NodeJS.ErrnoException];
  t.equal(err.code, 'ECONNRESET');
  t.equal(proxy.connections, 0);
});

t.test('resetAll also resets black-holed pairs', async (t) => {
  const proxy = await setup(t);
  const a = await connect(t, proxy.port);
  t.equal(await roundTrip(a, 'x'), 'x');
  proxy.blackhole();
  const errored = once(a, 'error');
  proxy.resetAll();
  const [err] = (await errored) as [NodeJS.ErrnoException];
  t.equal(err.code, 'ECONNRESET');
});

t.test('pauseNew holds new connections until released', async (t) => {
  const proxy = await setup(t);
  proxy.pauseNew(true);
  const a = await connect(t, proxy.port);
  a.write('queued');
  t.same(await watch(a, 300), [], 'nothing forwarded while paused');
  const data = once(a, 'data');
  proxy.pauseNew(false);
  const [chunk] = (await data) as [Buffer];
  t.equal(chunk.toString(), 'queued', 'bytes written while held arrive after release');
});

t.test('close destroys everything', async (t) => {
  const proxy = await setup(t);
  const a = await connect(t, proxy.port);
  t.equal(await roundTrip(a, 'x'), 'x');
  proxy.blackhole();
  const closed = once(a, 'close');
  a.on('error', () => {});
  await proxy.close();
  await closed;
  t.equal(proxy.connections, 0);
  await proxy.close();
});

import t, { type Test } from 'tap';
import net from 'node:net';
import http from 'node:http';
import path from 'node:path';
import { fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { leanAccept } from '../../src/egress/accept.js';
import { SUPERVISOR_NODE_FLAGS } from '../../src/paths.js';
import { onePolicy, portOf, startTcp, within } from './fixtures/helpers.js';

/*
 * A new connection through the proxy must leave (almost) nothing for the old
 * generation. Node 20's net.Socket constructor gave each socket new hidden
 * classes (a V8 11 quirk with spread copies, see src/egress/accept.ts): every
 * scavenge then copied about 1 MB, and old space filled every few thousand
 * connections, throwing away optimised code at each full GC. The p99 of a
 * new connection was 2–3 times squid's. After a full GC, the Set of open
 * sockets did the same through V8's replaced hash tables (linked-set.ts).
 */

const here = path.dirname(fileURLToPath(import.meta.url));
const PROXY_CHILD = path.join(here, '..', '..', 'dist', 'bench', 'egress-child.js');

/** Answers one request per connection, then closes. */
function startTarget(t: Test): Promise<net.Server> {
  return startTcp(t, (s) => s.once('data', () => s.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok')));
}

/** One CONNECT through the proxy, one request inside, then close. */
function oneTunnel(proxyPort: number, target: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port: proxyPort, noDelay: true });
    let buf = '';
    let tunnelled = false;
    s.on('connect', () => s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`));
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      if (!tunnelled && buf.includes('\r\n\r\n')) {
        if (!buf.startsWith('HTTP/1.1 200')) return reject(new Error(`CONNECT refused: ${buf.split('\r\n')[0]}`));
        tunnelled = true;
        buf = '';
        s.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
      } else if (tunnelled && buf.endsWith('\r\n\r\nok')) {
        s.destroy();
        resolve();
      }
    });
    s.on('error', reject);
  });
}

/**
 * Our proxy in a child process (the bench's) with extra V8 flags, to the
 * target; `trace()`: what V8 printed so far; `fullGc()`: a full GC there.
 */
async function startTracedProxy(
  t: Test,
  v8Flags: string[],
): Promise<{ child: ChildProcess; dest: string; port: number; trace: () => string; fullGc: () => Promise<void> }> {
  const target = await startTarget(t);
  const policy = onePolicy({ host: '127.0.0.1', port: portOf(target) });
  const child = fork(PROXY_CHILD, ['proxy', JSON.stringify(policy)], {
    execArgv: [...SUPERVISOR_NODE_FLAGS, ...v8Flags, '--expose-gc'],
    stdio: ['ignore', 'pipe', 'inherit', 'ipc'],
  });
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  let trace = '';
  child.stdout!.on('data', (d: Buffer) => (trace += d.toString()));
  const [msg] = (await within(20_000, once(child, 'message'), 'proxy start')) as [{ port: number }];
  const fullGc = async (): Promise<void> => {
    child.send('gc');
    await once(child, 'message');
  };
  return { child, dest: `127.0.0.1:${portOf(target)}`, port: msg.port, trace: () => trace, fullGc };
}

t.test('a proxied connection promotes almost nothing to the old generation', async (t) => {
  // A 1 MiB young generation: a scavenge every few dozen connections, each traced.
  const p = await startTracedProxy(t, ['--trace-gc-nvp', '--max-semi-space-size=1']);
  const scavenges = (): string[] => p.trace().split('\n').filter((l) => l.includes('gc=s '));
  await within(120_000, (async () => {
    for (let i = 0; i < 2000; i++) await oneTunnel(p.port, p.dest); // warm: JIT, heap sizing
    const promotedPerConnection = async (): Promise<number> => {
      const before = scavenges().length;
      const n = 2000;
      for (let i = 0; i < n; i++) await oneTunnel(p.port, p.dest);
      const measured = scavenges().slice(before);
      t.ok(measured.length >= 10, `scavenges while measuring: ${measured.length}`);
      return measured.reduce((sum, l) => sum + Number(/promoted=(\d+)/.exec(l)?.[1] ?? 0), 0) / n;
    };
    // With Node's own accept and net.connect options: 1.2-1.7 KB per connection.
    const fresh = await promotedPerConnection();
    t.ok(fresh < 100, `promoted ${Math.round(fresh)} B per connection`);
    // After a full GC: 500 B per connection with the open sockets and the
    // pending deadlines in Sets, 100 with the sockets alone, 10-30 now.
    await p.fullGc();
    const afterFullGc = await promotedPerConnection();
    t.ok(afterFullGc < 64, `after a full GC: promoted ${Math.round(afterFullGc)} B per connection`);
  })(), 'tunnels');
});

t.test('a full GC between connections keeps the connection path optimised', async (t) => {
  const p = await startTracedProxy(t, ['--trace-deopt']);
  await within(60_000, (async () => {
    for (let i = 0; i < 3000; i++) await oneTunnel(p.port, p.dest);
    await p.fullGc(); // between connections: none is open
    for (let i = 0; i < 500; i++) await oneTunnel(p.port, p.dest);
    const ended = once(p.child.stdout!, 'end'); // every trace line is in once the child is gone
    p.child.kill();
    await ended;
  })(), 'tunnels');
  // V8 throws away optimised code whose hidden classes a full GC freed. With
  // no socket kept, some 65 functions of the connection path went; now ~17.
  const dropped = p.trace().split('\n').filter((l) => l.includes('reason: weak objects')).length;
  t.ok(dropped < 30, `optimised functions dropped by full GCs: ${dropped}`);
});

t.test('leanAccept: accepted sockets behave as with Node’s own accept', async (t) => {
  const hwm = 128 * 1024;
  const accepted: net.Socket[] = [];
  const server = net.createServer({ allowHalfOpen: true, highWaterMark: hwm }, (s) => {
    accepted.push(s);
    s.on('error', () => {});
    s.on('end', () => s.end('bye')); // half-open: still writable after the peer's FIN
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  t.equal(leanAccept(server), true, 'installed on this Node');

  await within(10_000, (async () => {
    const c = net.connect({ host: '127.0.0.1', port: portOf(server) });
    await once(c, 'connect');
    await new Promise<void>((resolve) => (accepted.length ? resolve() : server.once('connection', () => resolve())));
    const s = accepted[0]!;
    t.equal(s.readableHighWaterMark, hwm, 'server highWaterMark applied');
    t.equal(s.allowHalfOpen, true);
    t.equal((s as net.Socket & { server?: net.Server }).server, server, 'socket.server set');
    const count = await new Promise<number>((resolve, reject) => server.getConnections((e, n) => (e ? reject(e) : resolve(n))));
    t.equal(count, 1, 'counted as a connection');
    const reply: Buffer[] = [];
    c.on('data', (d: Buffer) => reply.push(d));
    c.end();
    await once(c, 'end');
    t.equal(Buffer.concat(reply).toString(), 'bye', 'answer after our FIN');
    c.destroy();
    // close() waits for the accepted socket to go, as with Node's accept.
    const closed = once(server, 'close');
    server.close();
    await closed;
    t.equal(s.destroyed, true);
  })(), 'half-open exchange');
});

t.test('leanAccept: an http.Server keeps its options (noDelay, keep-alive requests)', async (t) => {
  const server = http.createServer((req, res) => res.end(`${req.url} via ${(req.socket as net.Socket & { server?: net.Server }).server === server ? 'server' : '?'}`));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  t.equal(leanAccept(server), true);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const get = (p: string): Promise<string> =>
    new Promise((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port: portOf(server), path: p, agent }, (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (d: string) => (body += d));
          res.on('end', () => resolve(body));
        })
        .on('error', reject);
    });
  await within(10_000, (async () => {
    t.equal(await get('/a'), '/a via server');
    t.equal(await get('/b'), '/b via server', 'second request on the kept-alive socket');
  })());
});

t.test('leanAccept: a server that is not listening is left alone', async (t) => {
  const server = net.createServer();
  t.equal(leanAccept(server), false);
});

import t, { type Test } from 'tap';
import net from 'node:net';
import http from 'node:http';
import { once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import { connectVia, onePolicy, portOf, startHttp, startProxy, startTcp, within } from './fixtures/helpers.js';
import { slowCollect } from '../helpers/streams.js';

/*
 * Raw tunnels (CONNECT to an L4 endpoint) splice the two sockets by hand:
 * bytes must arrive intact and in order under backpressure both ways, a FIN
 * travels one way while the other keeps flowing, and an abort tears down both.
 */

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

t.test('L4 tunnel: 24 MiB each way intact under backpressure, FIN forwarded one way at a time', async (t) => {
  const down = randomBytes(24 << 20);
  const up = randomBytes(24 << 20);
  let serverGot: Promise<Buffer> | null = null;
  const server = await startTcp(t, (s) => {
    serverGot = slowCollect(s);
    // Keep sending after the client's FIN arrived: half-close must not stop this direction.
    void serverGot.then(() => s.end(down));
  });
  const { proxy } = await startProxy(t, onePolicy({ host: '127.0.0.1', port: portOf(server) }));
  await within(30_000, (async () => {
    const tun = await connectVia(t, proxy, `127.0.0.1:${portOf(server)}`);
    t.equal(tun.status, 200);
    tun.sock.removeAllListeners('data');
    const got = slowCollect(tun.sock);
    for (let i = 0; i < up.length; i += 1 << 20) tun.sock.write(up.subarray(i, i + (1 << 20)));
    tun.sock.end();
    const received = await got;
    t.equal(received.length, down.length);
    t.equal(sha(received), sha(down), 'download intact');
    t.equal(sha(await serverGot!), sha(up), 'upload intact');
  })());
});

t.test('L4 tunnel: an upstream abort mid-stream closes the client', async (t) => {
  const server = await startTcp(t, (s) => {
    s.write(randomBytes(1 << 20));
    setTimeout(() => s.resetAndDestroy(), 50);
  });
  const { proxy } = await startProxy(t, onePolicy({ host: '127.0.0.1', port: portOf(server) }));
  await within(5000, (async () => {
    const tun = await connectVia(t, proxy, `127.0.0.1:${portOf(server)}`);
    t.equal(tun.status, 200);
    await tun.bytes.closed();
    t.pass('client closed after upstream reset');
  })());
});

t.test('L4 tunnel: a client abort closes the upstream', async (t) => {
  let accept!: (a: { closed: Promise<unknown> }) => void;
  const accepted = new Promise<{ closed: Promise<unknown> }>((r) => (accept = r));
  const server = await startTcp(t, (s) => {
    s.resume();
    accept({ closed: new Promise((r) => (s.once('end', r), s.once('close', r))) });
  });
  const { proxy } = await startProxy(t, onePolicy({ host: '127.0.0.1', port: portOf(server) }));
  await within(5000, (async () => {
    const tun = await connectVia(t, proxy, `127.0.0.1:${portOf(server)}`);
    t.equal(tun.status, 200);
    const { closed } = await accepted;
    tun.sock.resetAndDestroy();
    await closed;
    t.pass('upstream closed after client reset');
  })());
});

t.test('rest tunnel and forward: large bodies intact through the L7 reader', async (t) => {
  const body = randomBytes(12 << 20);
  const server = await startHttp(t, (req, res) => {
    res.writeHead(200, { 'content-length': body.length });
    res.end(body);
  });
  const { proxy } = await startProxy(t, onePolicy({ host: '127.0.0.1', port: portOf(server), protocol: 'rest', access: 'full' }));
  await within(30_000, (async () => {
    for (let i = 0; i < 2; i++) {
      const got = await new Promise<Buffer>((resolve, reject) => {
        const req = http.request(
          { host: '127.0.0.1', port: proxy.port, path: `http://127.0.0.1:${portOf(server)}/big`, agent: false },
          (res) => slowCollect(res).then(resolve, reject),
        );
        req.on('error', reject);
        req.end();
      });
      t.equal(sha(got), sha(body), `forward body ${i} intact`);
    }
    const tun = await connectVia(t, proxy, `127.0.0.1:${portOf(server)}`);
    t.equal(tun.status, 200);
    for (let i = 0; i < 2; i++) {
      tun.sock.write(`GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
      const head = await tun.bytes.until('\r\n\r\n');
      t.match(head, /^HTTP\/1\.1 200/);
      const got = await tun.bytes.take(body.length);
      t.equal(sha(got), sha(body), `tunnel body ${i} intact`);
    }
  })());
});

import t from 'tap';
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { connectVia, onePolicy, portOf, startHttp, startProxy, startTcp, within } from './fixtures/helpers.js';
import { readSlowly, slowCollect } from '../helpers/streams.js';

/*
 * L7 (`protocol: rest`) bodies are pushed through chunk by chunk as they are
 * read: they must arrive intact under backpressure both ways, a body's end
 * must be found inside a read (Content-Length and chunked), and the bytes
 * after it must start the next request, which is checked on its own.
 */

const HOST = '127.0.0.1';
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const BIG = randomBytes(24 << 20);

/** Reads HTTP/1.1 responses off a raw socket slowly (pausing now and then), decoding Content-Length and chunked bodies. */
class SlowResponses {
  #chunks: Buffer[] = [];
  #len = 0;
  #wake: (() => void) | null = null;
  constructor(readonly sock: net.Socket, leftover: Buffer) {
    if (leftover.length) this.#push(leftover);
    sock.removeAllListeners('data');
    readSlowly(sock, (c) => this.#push(c), 8, 3);
  }
  #push(c: Buffer): void {
    this.#chunks.push(c);
    this.#len += c.length;
    this.#wake?.();
  }
  async #need(n: number): Promise<Buffer> {
    while (this.#len < n) await new Promise<void>((r) => (this.#wake = r));
    this.#wake = null;
    const all = this.#chunks.length === 1 ? this.#chunks[0]! : Buffer.concat(this.#chunks, this.#len);
    this.#chunks = [all];
    return all;
  }
  #take(n: number): Buffer {
    const all = this.#chunks[0]!;
    const out = all.subarray(0, n);
    this.#chunks = n < all.length ? [all.subarray(n)] : [];
    this.#len -= n;
    return out;
  }
  async #line(): Promise<string> {
    for (let want = 1; ; want = this.#len + 1) {
      const all = await this.#need(want);
      const i = all.indexOf('\r\n');
      if (i >= 0) return this.#take(i + 2).toString('latin1').slice(0, -2);
    }
  }
  async response(): Promise<{ status: number; body: Buffer }> {
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(await this.#line())?.[1]);
    const headers = new Map<string, string>();
    for (let l = await this.#line(); l !== ''; l = await this.#line()) {
      const c = l.indexOf(':');
      headers.set(l.slice(0, c).toLowerCase(), l.slice(c + 1).trim());
    }
    if (headers.get('transfer-encoding') === 'chunked') {
      const parts: Buffer[] = [];
      for (;;) {
        const size = parseInt(await this.#line(), 16);
        if (size === 0) break;
        await this.#need(size + 2);
        parts.push(Buffer.from(this.#take(size)));
        this.#take(2);
      }
      while ((await this.#line()) !== '');
      return { status, body: Buffer.concat(parts) };
    }
    const n = Number(headers.get('content-length') ?? 0);
    await this.#need(n);
    return { status, body: Buffer.from(this.#take(n)) };
  }
}

t.test('L7 tunnel: big Content-Length and chunked bodies stream intact both ways, each following request checked', async (t) => {
  let uploaded = '';
  const server = await startHttp(t, (req, res) => {
    if (req.url === '/big') {
      res.writeHead(200, { 'content-length': BIG.length });
      res.end(BIG);
    } else if (req.url === '/chunked') {
      // Uneven chunks, written with pauses so chunk lines fall anywhere in the proxy's reads.
      let off = 0;
      let size = 1;
      const next = (): void => {
        if (off >= BIG.length) return void res.end();
        const n = Math.min(size, BIG.length - off);
        const ok = res.write(BIG.subarray(off, off + n));
        off += n;
        size = (size * 7 + 13) % 300_000 || 1;
        if (ok) setImmediate(next);
        else res.once('drain', next);
      };
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      next();
    } else if (req.url === '/upload') {
      // A slow reader: the proxy must hold the client back, not buffer the body.
      void slowCollect(req, 8, 3).then((body) => {
        uploaded = sha(body);
        res.writeHead(200, { 'content-length': 2 });
        res.end('ok');
      });
    } else {
      res.writeHead(200, { 'content-length': 5 });
      res.end('small');
    }
  });
  const port = portOf(server);
  const { proxy, decisions } = await startProxy(
    t,
    onePolicy({
      host: HOST,
      port,
      protocol: 'rest',
      rules: [{ allow: { method: 'GET', path: '/**' } }, { allow: { method: 'PUT', path: '/upload' } }],
    }),
  );
  await within(30_000, (async () => {
    const tun = await connectVia(t, proxy, `${HOST}:${port}`);
    t.equal(tun.status, 200);
    const r = new SlowResponses(tun.sock, tun.bytes.buf);

    tun.sock.write(`GET /big HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    const big = await r.response();
    t.equal(big.status, 200);
    t.equal(sha(big.body), sha(BIG), '24 MiB Content-Length body intact');

    tun.sock.write(`GET /chunked HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    const chunked = await r.response();
    t.equal(chunked.status, 200);
    t.equal(sha(chunked.body), sha(BIG), '24 MiB chunked body intact');

    // Head and the whole body in one write, then a second request in the same write.
    tun.sock.write(
      Buffer.concat([
        Buffer.from(`PUT /upload HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: ${BIG.length}\r\n\r\n`),
        BIG,
        Buffer.from(`GET /small HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`),
      ]),
    );
    const up = await r.response();
    t.equal(up.status, 200);
    t.equal(uploaded, sha(BIG), 'upload intact under backpressure');
    const small = await r.response();
    t.equal(small.body.toString(), 'small', 'pipelined request after a body is served');

    tun.sock.write(`DELETE /big HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    t.equal((await r.response()).status, 403, 'a later request is still checked');
    const l7 = decisions.filter((d) => d.layer === 'L7').map((d) => `${d.action} ${d.method} ${d.path}`);
    t.same(l7, ['allow GET /big', 'allow GET /chunked', 'allow PUT /upload', 'allow GET /small', 'deny DELETE /big']);
  })());
});

t.test('L7 forward: a chunked upload whose terminator is split across writes reaches the origin', async (t) => {
  const server = await startHttp(t);
  const port = portOf(server);
  const { proxy } = await startProxy(t, onePolicy({ host: HOST, port, protocol: 'rest', access: 'full' }));
  await within(10_000, (async () => {
    const sock = net.connect({ host: '127.0.0.1', port: proxy.port });
    t.teardown(() => sock.destroy());
    await new Promise((r) => sock.once('connect', r));
    sock.setNoDelay(true);
    const got = new Promise<string>((resolve) => {
      let acc = '';
      sock.on('data', (c: Buffer) => {
        acc += c.toString('latin1');
        if (/\r\n\r\n\{.*\}$/s.test(acc)) resolve(acc);
      });
    });
    const parts = [
      `POST http://${HOST}:${port}/u HTTP/1.1\r\nHost: ${HOST}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel`,
      'lo\r\n',
      '6;ext=1\r\n world\r\n0',
      '\r\n',
      '\r',
      '\n',
    ];
    for (const p of parts) {
      sock.write(p);
      await new Promise((r) => setTimeout(r, 20));
    }
    const res = await got;
    t.match(res, /^HTTP\/1\.1 200 /);
    t.same(JSON.parse(res.slice(res.indexOf('\r\n\r\n') + 4)), { method: 'POST', url: '/u', bytes: 11 });
  })());
});


t.test('L7 tunnel: pipelined requests with bodies meet responses with bodies already read: every byte, in order, both ways', async (t) => {
  // Most heads arrive with their whole body right after them in one read
  // (sent in one write), and some are cut across reads, so both the one-write
  // path and the pump carry bodies, each followed by the next head.
  const N = 2000;
  const bodyOf = (tag: string, i: number, pad: string): string => `${tag}${i}:` + pad.repeat((i * 7) % 53);
  let requests = '';
  let responses = '';
  for (let i = 0; i < N; i++) {
    const q = bodyOf('q', i, 'z');
    const r = bodyOf('r', i, 'y');
    requests += `POST /u/${i} HTTP/1.1\r\nHost: ${HOST}\r\nContent-Length: ${q.length}\r\n\r\n${q}`;
    responses += `HTTP/1.1 200 OK\r\nContent-Length: ${r.length}\r\n\r\n${r}`;
  }
  let received = '';
  let allReceived: () => void = () => {};
  const upstreamDone = new Promise<void>((r) => (allReceived = r));
  const upstream = await startTcp(t, (s) => {
    s.once('data', () => s.write(responses));
    s.on('data', (c: Buffer) => {
      received += c.toString('latin1');
      if (received.length >= requests.length) allReceived();
    });
  });
  const port = portOf(upstream);
  const { proxy, decisions } = await startProxy(t, onePolicy({ host: HOST, port, protocol: 'rest', access: 'full' }));
  await within(20_000, (async () => {
    const tun = await connectVia(t, proxy, `${HOST}:${port}`);
    t.equal(tun.status, 200);
    tun.sock.write(requests);
    const got = (await tun.bytes.take(responses.length)).toString('latin1');
    t.ok(got === responses, 'the client got every response, byte for byte');
    await upstreamDone;
    t.ok(received === requests, 'the upstream got every request, byte for byte');
  })());
  t.equal(decisions.filter((d) => d.action === 'allow' && d.layer === 'L7').length, N, 'each request checked');
});

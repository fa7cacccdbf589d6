import t from 'tap';
import net from 'node:net';
import tls from 'node:tls';
import http from 'node:http';
import { once } from 'node:events';
import { silentLogger, type Logger } from '../../src/log.js';
import { selfSignedCert } from '../helpers/tls.js';
import { startEgressProxy, type Policy } from '../../src/egress/index.js';
import {
  connectVia,
  dial,
  forwardRequest,
  onePolicy,
  portOf,
  startHttp,
  startProxy,
  startTcp,
  within,
} from './fixtures/helpers.js';

const API = 'api.example.test';

t.test('default deny: 403 JSON naming the decision, connection closed', async (t) => {
  const server = await startHttp(t);
  const { proxy, decisions } = await startProxy(t, null);
  await within(5000, (async () => {
    const c = await dial(t, proxy.port);
    c.sock.write(`GET http://${API}:${portOf(server)}/x HTTP/1.1\r\nHost: ${API}\r\n\r\n`);
    const r = await c.bytes.response();
    t.equal(r.status, 403);
    t.match(r.head, /\r\ncontent-type: application\/json\r\n/i);
    t.match(r.head, /\r\nconnection: close\r\n/i);
    const body = JSON.parse(r.body);
    t.match(body, { error: String, host: API, port: portOf(server), reason: /no network policy/, policy: null });
    await c.bytes.closed();

    const tun = await connectVia(t, proxy, `${API}:${portOf(server)}`);
    t.equal(tun.status, 403);
    t.match(JSON.parse(tun.body), { host: API, port: portOf(server), policy: null });
    await tun.bytes.closed();
  })());
  t.equal(decisions.length, 2);
  t.match(decisions[0], { action: 'deny', host: API, layer: 'L4', method: 'GET', path: '/x' });
});

t.test('host matching through the proxy: exact, *. one label, **. deep, port mismatch', async (t) => {
  const server = await startHttp(t);
  const port = portOf(server);
  const policy: Policy = {
    version: 1,
    network_policies: {
      exact: { endpoints: [{ host: API, port, allowed_ips: ['127.0.0.1'] }] },
      one: { endpoints: [{ host: '*.one.test', port, allowed_ips: ['127.0.0.0/8'] }] },
      deep: { endpoints: [{ host: '**.deep.test', port, allowed_ips: ['127.0.0.1/32'] }] },
    },
  };
  const { proxy, decisions } = await startProxy(t, policy);
  const get = (host: string, p = port) => forwardRequest(proxy, `http://${host}:${p}/hello`);
  await within(5000, (async () => {
    t.equal((await get(API)).status, 200, 'exact');
    t.equal((await get('API.EXAMPLE.TEST')).status, 200, 'exact, case-insensitive');
    t.equal((await get('x.one.test')).status, 200, '*. one label');
    t.equal((await get('y.x.one.test')).status, 403, '*. is not deep');
    t.equal((await get('a.b.c.deep.test')).status, 200, '**. deep');
    t.equal((await get('other.test')).status, 403, 'unlisted host');
    const wrongPort = await get(API, port + 1 > 65535 ? port - 1 : port + 1);
    t.equal(wrongPort.status, 403, 'port mismatch');
    t.match(JSON.parse(wrongPort.body), { policy: null, reason: /no policy endpoint/ });
    t.equal((await connectVia(t, proxy, `x.one.test:${port}`)).status, 200, 'CONNECT wildcard');
  })());
  t.match(decisions.find((d) => d.host === 'x.one.test'), { action: 'allow', policy: 'one', layer: 'L4' });
});

t.test('L7 access presets, rules with **, deny_rules, audit', async (t) => {
  const server = await startHttp(t);
  const port = portOf(server);
  const ep = (host: string, extra: Record<string, unknown>) => ({ host, port, protocol: 'rest' as const, allowed_ips: ['127.0.0.1/32'], ...extra });
  const policy = {
    version: 1,
    network_policies: {
      ro: { endpoints: [ep('ro.test', { access: 'read-only' })] },
      rw: { endpoints: [ep('rw.test', { access: 'read-write' })] },
      full: { endpoints: [ep('full.test', { access: 'full', deny_rules: [{ method: 'DELETE', path: '/keep/**' }] })] },
      rules: {
        endpoints: [
          ep('rules.test', {
            rules: [{ allow: { method: 'GET', path: '/repos/**' } }, { allow: { method: 'POST', path: '/repos/*/issues' } }],
            deny_rules: [{ method: '*', path: '/repos/*/admin/**' }],
          }),
        ],
      },
      audit: { endpoints: [ep('audit.test', { access: 'read-only', enforcement: 'audit' })] },
    },
  } as Policy;
  const { proxy, decisions } = await startProxy(t, policy);
  const req = (method: string, host: string, path: string) =>
    forwardRequest(proxy, `http://${host}:${port}${path}`, { method, body: method === 'GET' || method === 'HEAD' ? undefined : 'x' });
  await within(10_000, (async () => {
    const expect: Array<[string, string, string, number]> = [
      ['GET', 'ro.test', '/a', 200],
      ['HEAD', 'ro.test', '/a', 200],
      ['OPTIONS', 'ro.test', '/a', 200],
      ['POST', 'ro.test', '/a', 403],
      ['POST', 'rw.test', '/a', 200],
      ['PUT', 'rw.test', '/a', 200],
      ['PATCH', 'rw.test', '/a', 200],
      ['DELETE', 'rw.test', '/a', 403],
      ['DELETE', 'full.test', '/a', 200],
      ['DELETE', 'full.test', '/keep/x/y', 403],
      ['GET', 'rules.test', '/repos/o/r/pulls/1', 200],
      ['GET', 'rules.test', '/repos', 200],
      ['POST', 'rules.test', '/repos/r/issues', 200],
      ['POST', 'rules.test', '/repos/o/r/issues', 403],
      ['GET', 'rules.test', '/users/x', 403],
      ['GET', 'rules.test', '/repos/o/admin/keys', 403],
      ['GET', 'rules.test', '/repos/x/../o/admin/keys', 403],
      ['POST', 'audit.test', '/a', 200],
    ];
    for (const [method, host, path, status] of expect) {
      const r = await req(method, host, path);
      t.equal(r.status, status, `${method} ${host}${path} → ${status}`);
      if (status === 403) t.match(JSON.parse(r.body), { host, port, method, layer: 'L7', policy: host.split('.')[0] });
    }
  })());
  t.match(decisions.find((d) => d.host === 'audit.test'), { action: 'audit', layer: 'L7', method: 'POST', path: '/a', policy: 'audit' });
  t.match(decisions.find((d) => d.host === 'full.test' && d.action === 'deny'), { reason: /deny rule/ });
});

t.test('path escapes in rest requests are rejected with 400', async (t) => {
  const server = await startHttp(t);
  const { proxy } = await startProxy(t, onePolicy({ host: API, port: portOf(server), protocol: 'rest', access: 'full' }));
  await within(5000, (async () => {
    for (const p of ['/a/../../etc/passwd', '/a%2fb', '/a%5Cb', '/%2e%2e/x']) {
      const c = await dial(t, proxy.port);
      c.sock.write(`GET http://${API}:${portOf(server)}${p} HTTP/1.1\r\nHost: ${API}\r\n\r\n`);
      t.equal((await c.bytes.response()).status, 400, p);
      await c.bytes.closed();
    }
  })());
});

t.test('keep-alive: second request denied at L7 after the first was allowed (forward and tunnel)', async (t) => {
  const server = await startHttp(t);
  const port = portOf(server);
  const { proxy, decisions } = await startProxy(t, onePolicy({ host: API, port, protocol: 'rest', access: 'read-only' }));
  await within(5000, (async () => {
    const c = await dial(t, proxy.port);
    c.sock.write(`GET http://${API}:${port}/one HTTP/1.1\r\nHost: ${API}\r\n\r\n`);
    const r1 = await c.bytes.response();
    t.equal(r1.status, 200);
    t.match(JSON.parse(r1.body), { method: 'GET', url: '/one' }, 'absolute URI rewritten to origin-form');
    c.sock.write(`DELETE http://${API}:${port}/two HTTP/1.1\r\nHost: ${API}\r\n\r\n`);
    const r2 = await c.bytes.response();
    t.equal(r2.status, 403);
    await c.bytes.closed();

    const tun = await connectVia(t, proxy, `${API}:${port}`);
    t.equal(tun.status, 200);
    tun.sock.write(`GET /three HTTP/1.1\r\nHost: ${API}\r\n\r\nGET /four HTTP/1.1\r\nHost: ${API}\r\n\r\n`);
    t.equal((await tun.bytes.response()).status, 200, 'pipelined 1');
    t.equal((await tun.bytes.response()).status, 200, 'pipelined 2');
    tun.sock.write(`POST /five HTTP/1.1\r\nHost: ${API}\r\nContent-Length: 2\r\n\r\nhi`);
    const r5 = await tun.bytes.response();
    t.equal(r5.status, 403);
    t.match(JSON.parse(r5.body), { method: 'POST', path: '/five', layer: 'L7' });
    await tun.bytes.closed();
  })());
  t.same(
    decisions.map((d) => `${d.action} ${d.layer} ${d.method ?? 'CONNECT'} ${d.path ?? ''}`),
    ['allow L7 GET /one', 'deny L7 DELETE /two', 'allow L4 CONNECT ', 'allow L7 GET /three', 'allow L7 GET /four', 'deny L7 POST /five'],
  );
});

t.test('forward keep-alive: each request decided on its own, target may change', async (t) => {
  const a = await startHttp(t);
  const b = await startHttp(t);
  const policy: Policy = {
    network_policies: {
      a: { endpoints: [{ host: 'a.test', port: portOf(a), allowed_ips: ['127.0.0.1'] }] },
      b: { endpoints: [{ host: 'b.test', port: portOf(b), allowed_ips: ['127.0.0.1'] }] },
    },
  };
  const { proxy } = await startProxy(t, policy);
  await within(5000, (async () => {
    const c = await dial(t, proxy.port);
    for (const [h, p] of [['a.test', portOf(a)], ['b.test', portOf(b)], ['a.test', portOf(a)]] as const) {
      c.sock.write(`GET http://${h}:${p}/x HTTP/1.1\r\nHost: ${h}\r\n\r\n`);
      t.equal((await c.bytes.response()).status, 200, h);
    }
    c.sock.write(`GET http://c.test:${portOf(a)}/x HTTP/1.1\r\nHost: c.test\r\n\r\n`);
    t.equal((await c.bytes.response()).status, 403, 'unlisted target on the same connection');
  })());
});

t.test('chunked 20 MiB upload streams through a rest endpoint', async (t) => {
  const TOTAL = 20 * 1024 * 1024;
  let firstByteAt = 0;
  let received = 0;
  const server = await startHttp(t, (req, res) => {
    req.on('data', (c: Buffer) => {
      if (!firstByteAt) firstByteAt = Date.now();
      received += c.length;
    });
    req.on('end', () => res.end(JSON.stringify({ received, chunked: req.headers['transfer-encoding'] })));
  });
  const { proxy } = await startProxy(t, onePolicy({ host: API, port: portOf(server), protocol: 'rest', access: 'read-write' }));
  const rssBefore = process.memoryUsage().rss;
  const result = await within(20_000, new Promise<{ status: number; body: string; finishedAt: number }>((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: proxy.port, method: 'POST', path: `http://${API}:${portOf(server)}/upload`, agent: false });
    let finishedAt = 0;
    req.on('response', (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, body, finishedAt }));
    });
    req.on('error', reject);
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    let sent = 0;
    const pump = (): void => {
      while (sent < TOTAL) {
        sent += chunk.length;
        if (!req.write(chunk)) {
          req.once('drain', pump);
          return;
        }
      }
      finishedAt = Date.now();
      req.end();
    };
    pump();
  }));
  t.equal(result.status, 200);
  t.same(JSON.parse(result.body), { received: TOTAL, chunked: 'chunked' });
  t.ok(firstByteAt > 0 && firstByteAt <= result.finishedAt, 'server received bytes before the client finished sending');
  t.ok(process.memoryUsage().rss - rssBefore < 60 * 1024 * 1024, 'no whole-body buffering');
});

t.test('100 Continue is forwarded and the body follows', async (t) => {
  const server = await startHttp(t);
  const { proxy } = await startProxy(t, onePolicy({ host: API, port: portOf(server), protocol: 'rest', access: 'read-write' }));
  await within(5000, (async () => {
    const c = await dial(t, proxy.port);
    c.sock.write(`POST http://${API}:${portOf(server)}/up HTTP/1.1\r\nHost: ${API}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n`);
    t.match(await c.bytes.until('\r\n\r\n'), /^HTTP\/1\.1 100 Continue/);
    c.sock.write('hello');
    const r = await c.bytes.response();
    t.equal(r.status, 200);
    t.match(JSON.parse(r.body), { method: 'POST', bytes: 5 });
  })());
});

t.test('unsolicited 101 is a protocol error: 502 and close', async (t) => {
  const evil = await startTcp(t, (s) =>
    s.once('data', () => s.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nRAWBYTES')),
  );
  for (const rest of [false, true]) {
    const { proxy } = await startProxy(t, onePolicy(rest ? { host: API, port: portOf(evil), protocol: 'rest', access: 'full' } : { host: API, port: portOf(evil) }));
    await within(5000, (async () => {
      const c = await dial(t, proxy.port);
      c.sock.write(`GET http://${API}:${portOf(evil)}/ HTTP/1.1\r\nHost: ${API}\r\n\r\n`);
      const r = await c.bytes.response();
      t.equal(r.status, 502, `forward ${rest ? 'rest' : 'L4'}`);
      t.match(JSON.parse(r.body).reason, /unsolicited 101/);
      await c.bytes.closed();
      t.notMatch(c.bytes.buf.toString(), /RAWBYTES/);
    })());
  }
});

t.test('setPolicy hot swap: denied → allowed → denied, no restart', async (t) => {
  const server = await startHttp(t);
  const { proxy } = await startProxy(t, null);
  const url = `http://${API}:${portOf(server)}/x`;
  await within(5000, (async () => {
    t.equal((await forwardRequest(proxy, url)).status, 403);
    // an L7 tunnel opened under v1 sees v2 on its next request
    proxy.setPolicy(onePolicy({ host: API, port: portOf(server), protocol: 'rest', access: 'read-only' }), 1);
    t.equal(proxy.policyVersion, 1);
    t.equal((await forwardRequest(proxy, url)).status, 200);
    const tun = await connectVia(t, proxy, `${API}:${portOf(server)}`);
    tun.sock.write(`GET /a HTTP/1.1\r\nHost: ${API}\r\n\r\n`);
    t.equal((await tun.bytes.response()).status, 200);
    proxy.setPolicy(null, 2);
    t.equal(proxy.policyVersion, 2);
    t.equal((await forwardRequest(proxy, url)).status, 403);
    tun.sock.write(`GET /b HTTP/1.1\r\nHost: ${API}\r\n\r\n`);
    t.equal((await tun.bytes.response()).status, 403, 'existing L7 tunnel checks the current policy');
  })());
  t.throws(() => proxy.setPolicy({ network_policies: { x: { endpoints: [{ host: '*', port: 1 }] } } }, 3), { name: 'PolicyError' });
  t.equal(proxy.policyVersion, 2, 'a rejected policy changes nothing');
});

t.test('bad input → 400 and close; the proxy keeps serving', async (t) => {
  const server = await startHttp(t);
  const { proxy } = await startProxy(t, onePolicy({ host: API, port: portOf(server) }));
  const cases: Array<[string, string | Buffer, number[]]> = [
    ['garbage request line', 'HELLO THERE\r\n\r\n', [400]],
    ['binary garbage', Buffer.from([0, 1, 2, 3, 13, 10, 13, 10]), [400]],
    ['1 MiB header', `GET http://${API}:${portOf(server)}/ HTTP/1.1\r\nX-Big: ${'a'.repeat(1 << 20)}\r\n\r\n`, [400]],
    ['CONNECT without port', `CONNECT ${API} HTTP/1.1\r\nHost: ${API}\r\n\r\n`, [400]],
    ['CONNECT head over 8 KiB', `CONNECT ${API}:${portOf(server)} HTTP/1.1\r\nX: ${'b'.repeat(9000)}\r\n\r\n`, [400]],
    ['userinfo', `GET http://user:pw@${API}:${portOf(server)}/ HTTP/1.1\r\nHost: ${API}\r\n\r\n`, [400]],
    ['origin-form', `GET /x HTTP/1.1\r\nHost: ${API}\r\n\r\n`, [400]],
    ['bad port', `GET http://${API}:99999/ HTTP/1.1\r\n\r\n`, [400]],
    ['TE + CL smuggling', `POST http://${API}:${portOf(server)}/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n`, [400]],
    ['obs-fold', `GET http://${API}:${portOf(server)}/ HTTP/1.1\r\nX: a\r\n b\r\n\r\n`, [400]],
  ];
  await within(10_000, (async () => {
    for (const [name, bytes, statuses] of cases) {
      const c = await dial(t, proxy.port);
      c.sock.write(bytes);
      const r = await c.bytes.response();
      t.ok(statuses.includes(r.status), `${name}: ${r.status}`);
      if (name.includes('1 MiB') || name.includes('8 KiB')) t.match(JSON.parse(r.body), { reason: /request head too large/ });
      await c.bytes.closed();
    }
    t.equal((await forwardRequest(proxy, `http://${API}:${portOf(server)}/ok`)).status, 200, 'still serving');
  })());
});

t.test('upstream failures: 502 on refused, 504 on connect timeout', async (t) => {
  const closed = net.createServer();
  closed.listen(0, '127.0.0.1');
  await once(closed, 'listening');
  const deadPort = portOf(closed);
  await new Promise((r) => closed.close(r));
  const { proxy } = await startProxy(t, onePolicy({ host: API, port: deadPort }));
  const r = await within(5000, forwardRequest(proxy, `http://${API}:${deadPort}/`));
  t.equal(r.status, 502);
  const slow = await startProxy(t, onePolicy({ host: API, port: 9 }), {
    connectTimeoutMs: 200,
    connect: () => new net.Socket(), // never connects
  });
  const r2 = await within(5000, forwardRequest(slow.proxy, `http://${API}:9/`));
  t.equal(r2.status, 504);
  t.match(JSON.parse(r2.body), { reason: /timed out/ });
});

t.test('an address that never answers costs the attempt delay, not the connect timeout: the next one is tried beside it, and first from then on (Happy Eyeballs)', async (t) => {
  const server = await startHttp(t);
  const dialed: string[] = [];
  const silent: net.Socket[] = [];
  const policy = onePolicy({ host: 'dual.test', port: 80, allowed_ips: ['127.0.0.1', '10.0.0.0/8'] });
  const { proxy } = await startProxy(t, policy, {
    connectTimeoutMs: 60_000, // far longer than the test may take
    hosts: { 'dual.test': ['2001:db8::1', '2001:db8::2', '10.0.0.1', '127.0.0.1'] },
    connect: (address) => {
      dialed.push(address);
      if (address === '127.0.0.1') return net.connect({ host: '127.0.0.1', port: portOf(server) });
      const s = new net.Socket(); // a route that drops packets: neither connects nor fails
      silent.push(s);
      return s;
    },
  });
  const r = await within(10_000, forwardRequest(proxy, 'http://dual.test/x'));
  t.equal(r.status, 200, 'served through the address that answers');
  t.same(dialed, ['2001:db8::1', '10.0.0.1', '2001:db8::2', '127.0.0.1'], 'families alternate, each in the resolver\'s order');
  t.ok(silent.every((s) => s.destroyed), 'the attempts still running are closed once one connects');
  t.equal((await within(10_000, forwardRequest(proxy, 'http://dual.test/y'))).status, 200);
  t.same(dialed.slice(4), ['127.0.0.1'], 'the next connection tries the address that worked first, and needs no other');

  // A failure starts the next attempt at once; when every address fails, the last error is the answer.
  const refused: string[] = [];
  const down = await startProxy(t, onePolicy({ host: 'down.test', port: 80, allowed_ips: ['10.0.0.0/8'] }), {
    connectTimeoutMs: 60_000,
    hosts: { 'down.test': ['10.0.0.1', '10.0.0.2'] },
    connect: (address) => {
      refused.push(address);
      const s = new net.Socket();
      setImmediate(() => s.destroy(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' })));
      return s;
    },
  });
  const d = await within(10_000, forwardRequest(down.proxy, 'http://down.test/x'));
  t.equal(d.status, 502);
  t.match(JSON.parse(d.body), { reason: 'connect to upstream failed: ECONNREFUSED' });
  t.same(refused, ['10.0.0.1', '10.0.0.2']);
});

t.test('decision log lines never carry header values', async (t) => {
  const server = await startHttp(t);
  const lines: string[] = [];
  const capture: Logger = {
    debug: (o, m) => lines.push(JSON.stringify(o) + (m ?? '')),
    info: (o, m) => lines.push(JSON.stringify(o) + (m ?? '')),
    warn: (o, m) => lines.push(JSON.stringify(o) + (m ?? '')),
    error: (o, m) => lines.push(JSON.stringify(o) + (m ?? '')),
    child: () => capture,
  };
  const proxy = await startEgressProxy({
    policy: onePolicy({ host: '127.0.0.1', port: portOf(server), protocol: 'rest', access: 'read-only' }),
    log: capture,
  });
  t.teardown(() => proxy.close());
  const url = `http://127.0.0.1:${portOf(server)}/p?token=querysecret`;
  t.equal((await forwardRequest(proxy, url, { headers: { authorization: 'Bearer topsecret' } })).status, 200);
  t.equal((await forwardRequest(proxy, url, { method: 'DELETE', headers: { authorization: 'Bearer topsecret' } })).status, 403);
  t.ok(lines.some((l) => l.includes('egress decision')));
  t.notOk(lines.some((l) => l.includes('topsecret') || l.includes('querysecret')), 'no header values or query strings logged');
});

t.test('L7 tunnel: thousands of pipelined requests meeting responses already read are each checked, in order, without deep recursion', async (t) => {
  // An upstream that sends all its responses at once on connect: every
  // exchange after the first finds its response already read, so each one
  // completes inside the previous one's callback (the tunnel's trampoline).
  const N = 3000;
  const RESPONSE = 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n';
  let received = '';
  let upstreamClosed!: () => void;
  const upstreamDone = new Promise<void>((r) => (upstreamClosed = r));
  const upstream = await startTcp(t, (s) => {
    s.on('data', (c: Buffer) => (received += c.toString('latin1')));
    // The client may have every response before this side has read every request: wait for the proxy to close it.
    s.on('end', () => upstreamClosed());
    s.write(RESPONSE.repeat(N));
  });
  const port = portOf(upstream);
  const { proxy, decisions } = await startProxy(t, onePolicy({ host: API, port, protocol: 'rest', rules: [{ allow: { method: 'GET', path: '/ok/**' } }] }));
  await within(20_000, (async () => {
    const tun = await connectVia(t, proxy, `${API}:${port}`);
    t.equal(tun.status, 200);
    let burst = '';
    for (let i = 0; i < N; i++) burst += `GET /ok/${i} HTTP/1.1\r\nHost: ${API}\r\n\r\n`;
    tun.sock.write(burst);
    let statuses = 0;
    for (let i = 0; i < N; i++) if ((await tun.bytes.response()).status === 200) statuses++;
    t.equal(statuses, N, 'every request answered');
    // Then one that is denied: refused, and the tunnel ends.
    tun.sock.write(`GET /other HTTP/1.1\r\nHost: ${API}\r\n\r\n`);
    t.equal((await tun.bytes.response()).status, 403);
    await tun.bytes.closed();
    await upstreamDone;
  })());
  const forwarded = received.split('\r\n\r\n').filter(Boolean);
  t.equal(forwarded.length, N, 'the upstream saw each allowed request and not the denied one');
  t.equal(forwarded[N - 1], `GET /ok/${N - 1} HTTP/1.1\r\nHost: ${API}`, 'in order');
  t.equal(decisions.filter((d) => d.action === 'allow' && d.layer === 'L7').length, N);
});

t.test('a flood of interim (1xx) responses already read is forwarded in a loop, then the final response', async (t) => {
  const N = 5000;
  const upstream = await startTcp(t, (s) => {
    s.once('data', () => s.write('HTTP/1.1 100 Continue\r\n\r\n'.repeat(N) + 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'));
  });
  const port = portOf(upstream);
  const { proxy } = await startProxy(t, onePolicy({ host: API, port, protocol: 'rest', access: 'full' }));
  await within(20_000, (async () => {
    const tun = await connectVia(t, proxy, `${API}:${port}`);
    tun.sock.write(`POST /u HTTP/1.1\r\nHost: ${API}\r\nContent-Length: 2\r\n\r\nhi`);
    const all = await tun.bytes.until('\r\n\r\nok');
    t.equal(all.split('HTTP/1.1 100 Continue\r\n\r\n').length - 1, N, 'every 100 Continue forwarded');
    t.ok(all.endsWith('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok'), 'then the final response');
  })());
});

t.test('TLS inside a rest tunnel passes at L4, with a warning decision; requests in plain HTTP are still checked', async (t) => {
  const { cert, key } = selfSignedCert();
  const tlsServer = tls.createServer({ cert, key }, (s) => s.pipe(s));
  tlsServer.listen(0, '127.0.0.1');
  await once(tlsServer, 'listening');
  t.teardown(() => tlsServer.close());
  const port = (tlsServer.address() as net.AddressInfo).port;
  const { proxy, decisions } = await startProxy(t, onePolicy({ host: API, port, protocol: 'rest', rules: [{ allow: { method: 'GET', path: '/ok' } }] }));
  await within(10_000, (async () => {
    const tun = await connectVia(t, proxy, `${API}:${port}`);
    t.equal(tun.status, 200);
    // The ClientHello is the tunnel's first byte, read after the 200 went out.
    const secure = tls.connect({ socket: tun.sock, ca: cert, servername: 'localhost' });
    t.teardown(() => secure.destroy());
    await once(secure, 'secureConnect');
    secure.write('through TLS');
    const [echo] = (await once(secure, 'data')) as [Buffer];
    t.equal(echo.toString(), 'through TLS', 'bytes pass both ways');
  })());
  t.match(decisions.at(-1), { action: 'allow', layer: 'L4', host: API, port, reason: /TLS inside a rest tunnel/ });

  // The same endpoint in plain HTTP: a request the rules do not allow is refused.
  const plain = await startHttp(t);
  const { proxy: p2 } = await startProxy(t, onePolicy({ host: API, port: portOf(plain), protocol: 'rest', rules: [{ allow: { method: 'GET', path: '/ok' } }] }));
  await within(5000, (async () => {
    const tun = await connectVia(t, p2, `${API}:${portOf(plain)}`);
    tun.sock.write(`GET /other HTTP/1.1\r\nHost: ${API}\r\n\r\n`);
    t.equal((await tun.bytes.response()).status, 403);
  })());
});

t.test('a request cannot name a host the policy did not allow: absolute URIs get their own Host, tunnel requests naming another are denied', async (t) => {
  // The origin answers with the host the request named: on a shared front (a CDN, a virtual host) that picks the site.
  const server = await startHttp(t, (req, res) => {
    const hosts = req.rawHeaders.filter((_, i) => i % 2 === 0 && req.rawHeaders[i]!.toLowerCase() === 'host').length;
    const body = JSON.stringify({ host: hosts > 1 ? `${hosts} Host fields` : (req.headers.host ?? null), url: req.url });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  const port = portOf(server);
  const policy: Policy = {
    version: 1,
    network_policies: {
      api: { endpoints: [{ host: API, port, protocol: 'rest', access: 'full', allowed_ips: ['127.0.0.1'] }] },
      audited: { endpoints: [{ host: 'audit.test', port, protocol: 'rest', access: 'full', enforcement: 'audit', allowed_ips: ['127.0.0.1'] }] },
    },
  };
  const { proxy, decisions } = await startProxy(t, policy);
  await within(10_000, (async () => {
    // Forward: the URI decides, and the origin is told the URI's host whatever the client sent.
    const c = await dial(t, proxy.port);
    c.sock.write(`GET http://${API}:${port}/a HTTP/1.1\r\nHost: evil.test\r\nX-Other: 1\r\n\r\n`);
    const a = await c.bytes.response();
    t.equal(a.status, 200);
    t.same(JSON.parse(a.body), { host: `${API}:${port}`, url: '/a' }, 'the client Host replaced by the URI authority');
    c.sock.write(`GET http://${API}:${port}/b HTTP/1.1\r\n\r\n`);
    t.same(JSON.parse((await c.bytes.response()).body), { host: `${API}:${port}`, url: '/b' }, 'and added when missing');
    c.sock.write(`GET http://${API}:${port}/c HTTP/1.1\r\nHost: ${API}\r\nHost: evil.test\r\n\r\n`);
    const two = await c.bytes.response();
    t.equal(two.status, 400);
    t.match(JSON.parse(two.body), { reason: 'more than one Host header' });
    await c.bytes.closed();

    // Tunnel: requests naming the tunnel's host pass (case, trailing dot and port do not matter), others get a 403.
    const tun = await connectVia(t, proxy, `${API}:${port}`);
    t.equal(tun.status, 200);
    tun.sock.write(`GET /d HTTP/1.1\r\nHost: API.Example.TEST.:${port}\r\n\r\n`);
    t.equal((await tun.bytes.response()).status, 200, 'same host, spelt differently');
    tun.sock.write(`GET /e HTTP/1.1\r\nHost: ${API}\r\n\r\nGET /e HTTP/1.1\r\nHost: ${API}\r\n\r\n`);
    t.equal((await tun.bytes.response()).status, 200, 'same host');
    t.equal((await tun.bytes.response()).status, 200, 'same host again (the kept bytes)');
    tun.sock.write(`GET /f HTTP/1.1\r\nHost: evil.test\r\n\r\n`);
    const f = await tun.bytes.response();
    t.equal(f.status, 403);
    t.match(JSON.parse(f.body), { host: API, layer: 'L7', method: 'GET', path: '/f', policy: 'api', reason: /Host header names evil\.test, not the tunnel's host api\.example\.test/ });
    await tun.bytes.closed();

    const uri = await connectVia(t, proxy, `${API}:${port}`);
    uri.sock.write(`GET http://${API}:${port}/g HTTP/1.1\r\nHost: ${API}\r\n\r\n`);
    t.equal((await uri.bytes.response()).status, 200, 'an absolute URI naming the tunnel host');
    uri.sock.write(`GET http://evil.test/h HTTP/1.1\r\nHost: ${API}\r\n\r\n`);
    const h = await uri.bytes.response();
    t.equal(h.status, 403);
    t.match(JSON.parse(h.body), { path: '/h', reason: /request URI names evil\.test, not the tunnel's host/ });
    await uri.bytes.closed();

    const old = await connectVia(t, proxy, `${API}:${port}`);
    old.sock.write(`GET /i HTTP/1.0\r\n\r\n`);
    const i = await old.bytes.response();
    t.equal(i.status, 200, 'HTTP/1.0 without Host names no other host');
    t.same(JSON.parse(i.body), { host: null, url: '/i' });

    const dup = await connectVia(t, proxy, `${API}:${port}`);
    dup.sock.write(`GET /j HTTP/1.1\r\nHost: ${API}\r\nHost: ${API}\r\n\r\n`);
    t.equal((await dup.bytes.response()).status, 400, 'two Host fields in a tunnel');
    await dup.bytes.closed();

    // Audit: logged as such and let through.
    const aud = await connectVia(t, proxy, `audit.test:${port}`);
    aud.sock.write(`GET /k HTTP/1.1\r\nHost: evil.test\r\n\r\n`);
    t.equal((await aud.bytes.response()).status, 200, 'audit only');
  })());
  const l7 = decisions.filter((d) => d.layer === 'L7').map((d) => `${d.action} ${d.host} ${d.path}`);
  t.same(l7, [
    `allow ${API} /a`,
    `allow ${API} /b`,
    `allow ${API} /d`,
    `allow ${API} /e`,
    `allow ${API} /e`,
    `deny ${API} /f`,
    `allow ${API} /g`,
    `deny ${API} /h`,
    `allow ${API} /i`,
    'audit audit.test /k',
  ]);
  t.match(decisions.at(-1), { reason: /Host header names evil\.test, not the tunnel's host audit\.test \(audit only: allowed\)/ });
});

t.test('a rest endpoint lets only WebSocket upgrades through: an h2c offer is denied at L7, an L4 endpoint passes it', async (t) => {
  const server = await startHttp(t);
  // The origin switches to whatever was offered and then speaks it (here: raw bytes).
  server.on('upgrade', (req: http.IncomingMessage, sock: net.Socket) => {
    sock.end(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${req.headers.upgrade}\r\nConnection: Upgrade\r\n\r\nswitched`);
  });
  const port = portOf(server);
  const policy: Policy = {
    version: 1,
    network_policies: {
      rest: { endpoints: [{ host: API, port, protocol: 'rest', access: 'full', allowed_ips: ['127.0.0.1'] }] },
      l4: { endpoints: [{ host: 'l4.test', port, allowed_ips: ['127.0.0.1'] }] },
    },
  };
  const { proxy, decisions } = await startProxy(t, policy);
  const h2c = 'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n';
  await within(10_000, (async () => {
    const c = await dial(t, proxy.port);
    c.sock.write(`GET http://${API}:${port}/a HTTP/1.1\r\nHost: ${API}\r\n${h2c}`);
    const a = await c.bytes.response();
    t.equal(a.status, 403, 'forward: h2c offer to a rest endpoint');
    t.match(JSON.parse(a.body), { layer: 'L7', method: 'GET', path: '/a', reason: /^upgrade to h2c: a rest endpoint lets only WebSocket upgrades through/ });
    await c.bytes.closed();

    const tun = await connectVia(t, proxy, `${API}:${port}`);
    tun.sock.write(`GET /b HTTP/1.1\r\nHost: ${API}\r\nConnection: Upgrade\r\nUpgrade: websocket, h2c\r\n\r\n`);
    const b = await tun.bytes.response();
    t.equal(b.status, 403, 'tunnel: websocket offered with h2c');
    t.match(JSON.parse(b.body), { path: '/b', reason: /^upgrade to h2c:/ });
    await tun.bytes.closed();

    const junk = await connectVia(t, proxy, `${API}:${port}`);
    junk.sock.write(`GET /c HTTP/1.1\r\nHost: ${API}\r\nConnection: Upgrade\r\nUpgrade: x{secret}\r\n\r\n`);
    t.match(JSON.parse((await junk.bytes.response()).body), { reason: /^upgrade to another protocol:/ }, 'a protocol that is not a short token is not echoed');

    const l4 = await dial(t, proxy.port);
    l4.sock.write(`GET http://l4.test:${port}/d HTTP/1.1\r\nHost: l4.test\r\n${h2c}`);
    const d = await l4.bytes.response();
    t.equal(d.status, 101, 'an L4 endpoint reads no requests: the switch goes through');
    await l4.bytes.closed();
    t.equal(l4.bytes.buf.toString('latin1'), 'switched', 'and the bytes after it');
  })());
  t.same(
    decisions.filter((d) => d.method !== undefined).map((d) => `${d.action} ${d.layer} ${d.path}`),
    ['deny L7 /a', 'deny L7 /b', 'deny L7 /c', 'allow L4 /d'],
  );
});

t.test('at its connection limit the proxy closes new connections at once, says so once, and serves again when one closes', async (t) => {
  const server = await startHttp(t);
  const port = portOf(server);
  const warnings: Array<{ o: object; m?: string }> = [];
  const log: Logger = { ...silentLogger, warn: (o, m) => warnings.push({ o, m }), child: () => log };
  const { proxy } = await startProxy(t, onePolicy({ host: API, port }), { maxConnections: 2, log });
  await within(10_000, (async () => {
    const a = await dial(t, proxy.port);
    const b = await dial(t, proxy.port);
    // Accepted in order: a and b count before c is taken.
    const c = await dial(t, proxy.port);
    await c.bytes.closed();
    t.equal(c.bytes.buf.length, 0, 'the third is closed without a byte');

    a.sock.write(`CONNECT ${API}:${port} HTTP/1.1\r\nHost: ${API}\r\n\r\n`);
    t.equal((await a.bytes.response()).status, 200, 'the first two are served');

    b.sock.destroy();
    // Once the proxy has seen b close, a new connection is served (until then it is refused like c).
    for (;;) {
      const d = await dial(t, proxy.port);
      d.sock.write(`GET http://${API}:${port}/again HTTP/1.1\r\nHost: ${API}\r\n\r\n`);
      const r = await d.bytes.response().catch(() => null);
      if (r === null) continue;
      t.equal(r.status, 200, 'served again below the limit');
      break;
    }
  })());
  const refused = warnings.filter((w) => w.m?.includes('connection limit'));
  t.equal(refused.length, 1, 'refusals are logged at most every 10 s');
  t.match(refused[0]?.o, { refused: 1, maxConnections: 2 });
});

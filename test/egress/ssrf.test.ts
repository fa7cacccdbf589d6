import t, { type Test } from 'tap';
import net from 'node:net';
import { connectVia, forwardRequest, portOf, startHttp, startProxy, within } from './fixtures/helpers.js';
import type { Policy } from '../../src/egress/index.js';

// Every upstream connection goes through a recording `connect` seam that
// lands on a loopback server, so no test traffic leaves the machine while we
// still see which checked address the proxy chose.

async function setup(t: Test, policy: Policy | null, hosts: Record<string, string[]> = {}) {
  const server = await startHttp(t);
  const dialed: string[] = [];
  const p = await startProxy(t, policy, {
    hosts,
    connect: (address, port) => {
      dialed.push(`${address}:${port}`);
      return net.connect({ host: '127.0.0.1', port: portOf(server) });
    },
  });
  return { ...p, dialed };
}

const PORT = 8443;

const INTERNAL: Array<[string, string]> = [
  ['127.0.0.1', 'loopback'],
  ['127.9.9.9', 'loopback /8'],
  ['::1', 'IPv6 loopback'],
  ['0.0.0.0', 'unspecified'],
  ['::', 'IPv6 unspecified'],
  ['169.254.169.254', 'cloud metadata'],
  ['169.254.1.1', 'link-local'],
  ['fe80::1', 'IPv6 link-local'],
  ['10.1.2.3', 'RFC 1918 10/8'],
  ['172.16.5.4', 'RFC 1918 172.16/12'],
  ['192.168.0.10', 'RFC 1918 192.168/16'],
  ['100.64.0.1', 'CGNAT'],
  ['fc00::1', 'ULA'],
  ['fd12:3456::1', 'ULA fd'],
  ['::ffff:127.0.0.1', 'mapped loopback'],
  ['::ffff:169.254.169.254', 'mapped metadata'],
  ['::ffff:10.0.0.1', 'mapped RFC 1918'],
  ['::ffff:a00:1', 'mapped RFC 1918, hex'],
];

t.test('a name resolving to an internal address is denied unless allowed_ips covers it', async (t) => {
  for (const [addr, what] of INTERNAL) {
    const hosts = { 'svc.example.test': [addr] };
    const denied = await setup(t, { network_policies: { p: { endpoints: [{ host: 'svc.example.test', port: PORT }] } } }, hosts);
    const r = await within(5000, connectVia(t, denied.proxy, `svc.example.test:${PORT}`));
    t.equal(r.status, 403, `${what} (${addr}) denied by default`);
    t.match(JSON.parse(r.body), { reason: /internal address/, policy: 'p' });
    t.same(denied.dialed, [], `${what}: never dialed`);

    const cidr = addr.includes(':') && !addr.startsWith('::ffff:') ? `${addr}/128` : `${addr.replace('::ffff:', '').replace(/^a00:1$/, '10.0.0.1')}/32`;
    const allowed = await setup(t, { network_policies: { p: { endpoints: [{ host: 'svc.example.test', port: PORT, allowed_ips: [addr.startsWith('::ffff:') ? addr : cidr] }] } } }, hosts);
    const r2 = await within(5000, connectVia(t, allowed.proxy, `svc.example.test:${PORT}`));
    t.equal(r2.status, 200, `${what} (${addr}) allowed with allowed_ips`);
    t.equal(allowed.dialed.length, 1, `${what}: dialed once`);
  }
});

t.test('IP literal hosts in every spelling: denied unless the endpoint names the IP', async (t) => {
  const spellings: Array<[string, string]> = [
    ['127.0.0.1', '127.0.0.1'],
    ['2130706433', '127.0.0.1'],
    ['0x7f.1', '127.0.0.1'],
    ['0x7f000001', '127.0.0.1'],
    ['127.1', '127.0.0.1'],
    ['0177.0.0.1', '127.0.0.1'],
    ['[::ffff:127.0.0.1]', '127.0.0.1'],
    ['[::ffff:7f00:1]', '127.0.0.1'],
    ['[::1]', '::1'],
    ['0', '0.0.0.0'],
    ['[::]', '::'],
    ['169.254.169.254', '169.254.169.254'],
    ['2852039166', '169.254.169.254'],
    ['0xa9.0xfe.0xa9.0xfe', '169.254.169.254'],
    ['[fe80::1]', 'fe80::1'],
    ['10.0.0.1', '10.0.0.1'],
    ['012.0.0.1', '10.0.0.1'],
    ['100.64.0.1', '100.64.0.1'],
    ['[fc00::1]', 'fc00::1'],
  ];
  // A policy whose wildcard covers names only; no IP is named.
  const names = await setup(t, { network_policies: { p: { endpoints: [{ host: '**.example.test', port: PORT, allowed_ips: ['0.0.0.0/0', '::/0'] }] } } });
  for (const [spelling] of spellings) {
    const r = await within(5000, connectVia(t, names.proxy, `${spelling}:${PORT}`));
    t.equal(r.status, 403, `${spelling} denied`);
    const f = await within(5000, forwardRequest(names.proxy, `http://${spelling}:${PORT}/`));
    t.equal(f.status, 403, `${spelling} denied (forward)`);
  }
  t.same(names.dialed, []);
  t.same(names.resolveCalls, [], 'IP literals are never sent to the resolver');

  for (const [spelling, canonical] of spellings) {
    const named = await setup(t, { network_policies: { p: { endpoints: [{ host: canonical, port: PORT }] } } });
    const r = await within(5000, connectVia(t, named.proxy, `${spelling}:${PORT}`));
    t.equal(r.status, 200, `${spelling} allowed when the endpoint names ${canonical}`);
    t.same(named.dialed, [`${canonical}:${PORT}`], `${spelling}: connects to the normalised address`);
  }
});

t.test('DNS rebinding: resolve once per intent, connect to the checked address', async (t) => {
  let calls = 0;
  const answers = [['203.0.113.10'], ['127.0.0.1']];
  const server = await startHttp(t);
  const dialed: string[] = [];
  const { proxy, decisions } = await startProxy(t, { network_policies: { p: { endpoints: [{ host: 'rebind.example.test', port: PORT }] } } }, {
    dnsTtlMs: 0, // a lookup per intent, so the second one meets the rebound answer
    resolve: async () => answers[Math.min(calls++, answers.length - 1)]!,
    connect: (address, port) => {
      dialed.push(address);
      return net.connect({ host: '127.0.0.1', port: portOf(server) });
    },
  });
  await within(5000, (async () => {
    const r1 = await connectVia(t, proxy, `rebind.example.test:${PORT}`);
    t.equal(r1.status, 200, 'public answer allowed');
    t.equal(calls, 1, 'exactly one lookup for the intent');
    t.same(dialed, ['203.0.113.10'], 'connected to the address that was checked');
    const r2 = await forwardRequest(proxy, `http://rebind.example.test:${PORT}/`);
    t.equal(r2.status, 403, 'the rebound private answer is denied');
    t.equal(calls, 2, 'one lookup per intent');
    t.same(dialed, ['203.0.113.10'], 'never dialed the private address');
  })());
  t.equal(decisions.filter((d) => d.action === 'deny').length, 1);
});

t.test('kept answers: later intents use the checked answer without a lookup, and never the rebound one', async (t) => {
  let calls = 0;
  const answers = [['203.0.113.10'], ['127.0.0.1']];
  const server = await startHttp(t);
  const dialed: string[] = [];
  const { proxy } = await startProxy(t, { network_policies: { p: { endpoints: [{ host: 'kept.example.test', port: PORT }] } } }, {
    resolve: async () => answers[Math.min(calls++, answers.length - 1)]!,
    connect: (address) => {
      dialed.push(address);
      return net.connect({ host: '127.0.0.1', port: portOf(server) });
    },
  });
  await within(5000, (async () => {
    for (let i = 0; i < 3; i++) t.equal((await connectVia(t, proxy, `kept.example.test:${PORT}`)).status, 200);
    t.equal((await forwardRequest(proxy, `http://kept.example.test:${PORT}/`)).status, 200);
  })());
  t.equal(calls, 1, 'one lookup for four intents: the rebound answer was never asked for');
  t.same(dialed, ['203.0.113.10', '203.0.113.10', '203.0.113.10', '203.0.113.10'], 'every connection went to the checked address');
});

t.test('a name resolving to [public, private] at once is denied', async (t) => {
  for (const mix of [['203.0.113.10', '10.0.0.5'], ['2001:db8::1', '::ffff:127.0.0.1'], ['203.0.113.10', '169.254.169.254']]) {
    const s = await setup(t, { network_policies: { p: { endpoints: [{ host: 'mixed.example.test', port: PORT }] } } }, { 'mixed.example.test': mix });
    const r = await within(5000, connectVia(t, s.proxy, `mixed.example.test:${PORT}`));
    t.equal(r.status, 403, mix.join(', '));
    t.same(s.dialed, []);
    t.equal(s.resolveCalls.length, 1);
  }
});

t.test('allowed_ips of one endpoint does not open another', async (t) => {
  const s = await setup(
    t,
    {
      network_policies: {
        a: { endpoints: [{ host: 'a.example.test', port: PORT, allowed_ips: ['10.0.0.0/8'] }] },
        b: { endpoints: [{ host: 'b.example.test', port: PORT }] },
      },
    },
    { 'a.example.test': ['10.1.1.1'], 'b.example.test': ['10.1.1.1'] },
  );
  t.equal((await within(5000, connectVia(t, s.proxy, `a.example.test:${PORT}`))).status, 200);
  t.equal((await within(5000, connectVia(t, s.proxy, `b.example.test:${PORT}`))).status, 403);
});

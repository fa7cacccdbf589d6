import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { NameCache, type Lookup } from '../../src/egress/dns.js';

/** A stand-in for getaddrinfo whose answers the test gives, one lookup at a time. */
function controlled(): { lookup: Lookup; calls: string[]; answer(host: string, addrs: string[] | Error): void } {
  const calls: string[] = [];
  const waiting = new Map<string, Array<{ ok: (a: string[]) => void; fail: (e: Error) => void }>>();
  return {
    calls,
    lookup: (host) =>
      new Promise((ok, fail) => {
        calls.push(host);
        const list = waiting.get(host) ?? [];
        list.push({ ok, fail });
        waiting.set(host, list);
      }),
    answer(host, addrs) {
      const w = waiting.get(host)?.shift();
      if (!w) throw new Error(`no lookup of ${host} waiting`);
      if (addrs instanceof Error) w.fail(addrs);
      else w.ok(addrs);
    },
  };
}

const settled = (): Promise<void> => new Promise((r) => setImmediate(r));

t.test('intents that need a name at once share one lookup; its answer is then kept and given at once', async (t) => {
  const l = controlled();
  const names = new NameCache({ lookup: l.lookup });
  const a = names.resolve('pypi.test');
  const b = names.resolve('pypi.test');
  t.equal(a, b, 'the same lookup');
  t.same(l.calls, ['pypi.test']);
  l.answer('pypi.test', ['203.0.113.7', '2001:db8::7']);
  t.same(await a, ['203.0.113.7', '2001:db8::7']);
  const kept = names.resolve('pypi.test');
  t.ok(Array.isArray(kept), 'kept: an array, not a promise');
  t.same(kept, ['203.0.113.7', '2001:db8::7']);
  t.same(l.calls, ['pypi.test'], 'no second lookup');
});

t.test('answers expire after ttlMs; ttlMs 0 keeps none; failures and empty answers are not kept', async (t) => {
  const l = controlled();
  const names = new NameCache({ lookup: l.lookup, ttlMs: 30 });
  const first = names.resolve('a.test');
  l.answer('a.test', ['203.0.113.1']);
  await first;
  t.ok(Array.isArray(names.resolve('a.test')));
  await sleep(40);
  const again = names.resolve('a.test');
  t.notOk(Array.isArray(again), 'expired: looked up again');
  l.answer('a.test', ['203.0.113.2']);
  t.same(await again, ['203.0.113.2']);

  const none = new NameCache({ lookup: l.lookup, ttlMs: 0 });
  for (const addr of ['203.0.113.3', '203.0.113.4']) {
    const p = none.resolve('b.test');
    t.notOk(Array.isArray(p));
    l.answer('b.test', [addr]);
    t.same(await p, [addr]);
  }

  const failing = names.resolve('c.test');
  l.answer('c.test', Object.assign(new Error('ENOTFOUND'), { code: 'ENOTFOUND' }));
  await t.rejects(failing as Promise<string[]>, { code: 'ENOTFOUND' });
  const retried = names.resolve('c.test');
  t.notOk(Array.isArray(retried), 'a failure is not kept');
  l.answer('c.test', []);
  t.same(await retried, []);
  t.notOk(Array.isArray(names.resolve('c.test')), 'nor an empty answer');
  l.answer('c.test', ['203.0.113.5']);
});

t.test('at most maxInFlight lookups run; the rest wait their turn', async (t) => {
  const l = controlled();
  const names = new NameCache({ lookup: l.lookup, maxInFlight: 2 });
  const a = names.resolve('a.test');
  const b = names.resolve('b.test');
  const c = names.resolve('c.test');
  t.same(l.calls, ['a.test', 'b.test'], 'two running, the third queued');
  t.equal(names.running, 2);
  l.answer('b.test', ['203.0.113.2']);
  await b;
  await settled();
  t.same(l.calls, ['a.test', 'b.test', 'c.test'], 'the queued one starts when a slot frees');
  l.answer('a.test', ['203.0.113.1']);
  l.answer('c.test', ['203.0.113.3']);
  t.same(await Promise.all([a, c]), [['203.0.113.1'], ['203.0.113.3']]);
  await settled();
  t.equal(names.running, 0);
});

t.test('a lookup not answered in timeoutMs fails with ETIMEOUT; its slot stays busy until it answers, and that answer is kept', async (t) => {
  // The cache's timer does not keep a process alive (a supervisor exits without waiting for lookups); this test must wait for it.
  const alive = setInterval(() => {}, 1000);
  t.teardown(() => clearInterval(alive));
  const l = controlled();
  const names = new NameCache({ lookup: l.lookup, maxInFlight: 1, timeoutMs: 30 });
  const stuck = names.resolve('stuck.test');
  const queued = names.resolve('queued.test');
  await t.rejects(stuck as Promise<string[]>, { code: 'ETIMEOUT' });
  await t.rejects(queued as Promise<string[]>, { code: 'ETIMEOUT' }, 'timed out while waiting for the slot');
  t.same(l.calls, ['stuck.test'], 'the slot is still held by the first');
  t.equal(names.running, 1);
  l.answer('stuck.test', ['203.0.113.9']);
  await settled();
  await settled();
  t.equal(names.running, 0);
  t.same(l.calls, ['stuck.test'], 'the queued lookup nobody waits for any more is not started');
  t.same(names.resolve('stuck.test'), ['203.0.113.9'], 'the late answer is kept');
});

t.test('at most maxEntries names are kept, the oldest dropped first', async (t) => {
  const l = controlled();
  const names = new NameCache({ lookup: l.lookup, maxEntries: 2 });
  for (const h of ['a.test', 'b.test', 'c.test']) {
    const p = names.resolve(h);
    l.answer(h, ['203.0.113.1']);
    await p;
  }
  t.notOk(Array.isArray(names.resolve('a.test')), 'the oldest was dropped');
  t.ok(Array.isArray(names.resolve('c.test')));
  l.answer('a.test', ['203.0.113.1']);
});

t.test('prefer: an address that worked is listed first in the kept answer from then on', async (t) => {
  const l = controlled();
  const names = new NameCache({ lookup: l.lookup });
  const p = names.resolve('dual.test');
  l.answer('dual.test', ['2001:db8::1', '203.0.113.1', '203.0.113.2']);
  const first = await p;
  names.prefer('dual.test', '203.0.113.2');
  t.same(names.resolve('dual.test'), ['203.0.113.2', '2001:db8::1', '203.0.113.1']);
  t.same(first, ['2001:db8::1', '203.0.113.1', '203.0.113.2'], 'an answer already handed out is not changed');
  names.prefer('dual.test', '198.51.100.9');
  names.prefer('other.test', '203.0.113.1');
  t.same(names.resolve('dual.test'), ['203.0.113.2', '2001:db8::1', '203.0.113.1'], 'unknown addresses and names change nothing');
});

t.test('the system resolver behind it: localhost through getaddrinfo', async (t) => {
  const names = new NameCache();
  const addrs = await names.resolve('localhost');
  t.ok(addrs.length > 0);
  t.ok(addrs.every((a) => a === '::1' || a.startsWith('127.')), `loopback addresses (${addrs.join(', ')})`);
  t.ok(Array.isArray(names.resolve('localhost')), 'then kept');
});

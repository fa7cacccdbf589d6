import { once } from 'node:events';
import t from 'tap';
import type { Sandbox, SandboxList } from '../../src/schemas/sandbox.js';
import { spawnGateway, killHard } from '../helpers/gateway-process.js';
import { api, tempDir } from '../helpers/gateway.js';
import { supervisorsOf } from '../helpers/sandbox.js';
import { freePort } from '../../bench/ports.js';

async function untilAllReady(url: string, count: number, timeoutMs: number): Promise<Sandbox[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { body } = await api<SandboxList>(url, 'GET', '/v1/sandboxes');
    if (body.sandboxes.length === count && body.sandboxes.every((s) => s.phase === 'Ready')) return body.sandboxes;
    if (Date.now() > deadline) throw new Error(`not all Ready: ${body.sandboxes.map((s) => `${s.name}=${s.phase}`).join(' ')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

t.test('kill -9 the gateway, restart on the same state dir: sandboxes adopted and Ready within 5 s', async (t) => {
  const stateDir = tempDir(t);
  const port = await freePort();
  const args = ['--port', String(port), '--state-dir', stateDir, '--keepalive-interval-ms', '500', '--keepalive-timeout-ms', '1500'];
  const first = await spawnGateway(t, args);
  const names = ['one', 'two', 'three'];
  const ids: string[] = [];
  for (const name of names) ids.push((await api<Sandbox>(first.url, 'POST', '/v1/sandboxes', { name })).body.id);
  t.teardown(async () => {
    // Whatever happens, no supervisor outlives the test.
    for (const id of ids) for (const pid of supervisorsOf(id)) process.kill(-pid, 'SIGKILL');
  });
  await untilAllReady(first.url, 3, 10_000);
  const before = ids.map((id) => supervisorsOf(id));
  t.same(before.map((p) => p.length), [1, 1, 1]);

  await killHard(first.child);
  const restartedAt = Date.now();
  const second = await spawnGateway(t, args);
  const sandboxes = await untilAllReady(second.url, 3, 5000);
  t.ok(Date.now() - restartedAt <= 5000 + 1000, `Ready again after ${Date.now() - restartedAt} ms`);
  t.same(sandboxes.map((s) => s.name).sort(), [...names].sort(), 'every sandbox still listed');
  t.same(ids.map((id) => supervisorsOf(id)), before, 'the same supervisors, no duplicates');

  // Deleting through the new gateway stops the adopted supervisors.
  for (const name of names) await api(second.url, 'DELETE', `/v1/sandboxes/${name}`);
  const deadline = Date.now() + 10_000;
  while (ids.some((id) => supervisorsOf(id).length > 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.same(ids.map((id) => supervisorsOf(id).length), [0, 0, 0]);
  second.child.kill('SIGTERM');
  const [code] = (await once(second.child, 'exit')) as [number];
  t.equal(code, 0, 'SIGTERM closes the gateway cleanly');
});

t.test('a supervisor that died while the gateway was down is reported as Error', async (t) => {
  const stateDir = tempDir(t);
  const port = await freePort();
  const args = ['--port', String(port), '--state-dir', stateDir];
  const first = await spawnGateway(t, args);
  const s = (await api<Sandbox>(first.url, 'POST', '/v1/sandboxes', { name: 'lost' })).body;
  await untilAllReady(first.url, 1, 10_000);
  await killHard(first.child);
  for (const pid of supervisorsOf(s.id)) process.kill(-pid, 'SIGKILL');
  const second = await spawnGateway(t, args);
  const got = await api<Sandbox>(second.url, 'GET', '/v1/sandboxes/lost');
  t.equal(got.body.phase, 'Error');
  t.equal(got.body.conditions[0].reason, 'WorkloadLost');
  await api(second.url, 'DELETE', '/v1/sandboxes/lost');
  // Deletion finishes in the background: wait for it before the gateway is stopped.
  const deadline = Date.now() + 10_000;
  while ((await api(second.url, 'GET', '/v1/sandboxes/lost')).status !== 404 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  t.equal((await api(second.url, 'GET', '/v1/sandboxes/lost')).status, 404, 'gone, with its files');
});

import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { ProcessDriver, shmRoot } from '../../src/drivers/process.js';
import { silentLogger } from '../../src/log.js';
import { join } from 'node:path';
import t from 'tap';
import type { Sandbox, SandboxList } from '../../src/schemas/sandbox.js';
import { ndjson } from '../helpers/exec.js';
import { alive, api, startGateway, tempDir, waitForPhase, waitForSandbox } from '../helpers/gateway.js';
import { processEnv, supervisorPid, supervisorsOf } from '../helpers/sandbox.js';

t.test('create → Ready, list, get, label filter, delete', async (t) => {
  const gw = await startGateway(t);
  const started = Date.now();
  const created = await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', {
    name: 'alpha',
    labels: { team: 'red' },
    command: ['sleep', 'infinity'],
  });
  t.equal(created.status, 201);
  t.equal(created.body.name, 'alpha');
  t.match(created.body.id, /^sbx_/);
  t.equal(created.body.driver, 'process');
  const ready = await waitForPhase(gw.app, 'alpha', 'Ready', 10_000);
  t.equal(ready.conditions[0].reason, 'SupervisorConnected');
  t.ok(Date.now() - started < 10_000, 'Ready within seconds');

  const other = await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { labels: { team: 'blue' } });
  t.equal(other.status, 201);
  t.match(other.body.name, /^[a-z]+-[a-z]+$/, 'generated two-word name');

  const all = await api<SandboxList>(gw.url, 'GET', '/v1/sandboxes');
  t.same(all.body.sandboxes.map((s) => s.name).sort(), ['alpha', other.body.name].sort());
  const red = await api<SandboxList>(gw.url, 'GET', '/v1/sandboxes?label=team=red');
  t.same(red.body.sandboxes.map((s) => s.name), ['alpha']);
  const got = await api<Sandbox>(gw.url, 'GET', '/v1/sandboxes/alpha');
  t.equal(got.body.id, created.body.id);
  const running = await waitForSandbox(gw.app, 'alpha', (s) => s.mainProcess.state === 'Running', 'running its command');
  t.equal(running.mainProcess.state, 'Running');

  const pid = supervisorPid(gw.stateDir, created.body.id);
  t.ok(alive(-pid), 'supervisor process group alive');
  t.equal(processEnv(pid, 'OPENSHELL_SANDBOX_TOKEN'), undefined, 'a warm supervisor got its token over a pipe, not in its environment');
  t.same(supervisorsOf(created.body.id), [pid], 'its title names the sandbox');
  const dir = join(gw.stateDir, 'sandboxes', created.body.id);
  t.ok(existsSync(dir));

  const deleting = await api<Sandbox>(gw.url, 'DELETE', '/v1/sandboxes/alpha');
  t.equal(deleting.status, 200);
  t.equal(deleting.body.phase, 'Deleting');
  await gw.app.openshell.sandboxes.deleted(created.body.id);
  const gone = await api(gw.url, 'GET', '/v1/sandboxes/alpha');
  t.equal(gone.status, 404);
  // The supervisor is our child here: its exit is reaped asynchronously, so allow a moment.
  const deadline = Date.now() + 5000;
  while (alive(-pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.notOk(alive(-pid), 'process group dead');
  t.same(supervisorsOf(created.body.id), [], 'no supervisor left');
  t.notOk(existsSync(dir), 'directory removed');
});

t.test('the entrypoint exiting leaves the sandbox usable and reports mainProcess', async (t) => {
  const gw = await startGateway(t);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'quick', command: ['sh', '-c', 'exit 3'] });
  await waitForPhase(gw.app, 'quick', 'Ready');
  const exited = await waitForSandbox(gw.app, 'quick', (s) => s.mainProcess.state === 'Exited', 'exited');
  t.equal(exited.phase, 'Ready');
  t.same(exited.mainProcess, { state: 'Exited', exitCode: 3, signal: null });
});

t.test('ttlSeconds: the gateway deletes the sandbox when its TTL runs out', async (t) => {
  const gw = await startGateway(t, { ttlSweepMs: 100 });
  const created = await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'brief', ttlSeconds: 1 });
  t.ok(created.body.expiresAt);
  await new Promise<void>((resolve) => {
    const off = gw.app.openshell.sandboxes.on('deleted', (r) => {
      if (r.name === 'brief') {
        off();
        resolve();
      }
    });
  });
  t.equal((await api(gw.url, 'GET', '/v1/sandboxes/brief')).status, 404);
  t.same(supervisorsOf(created.body.id), []);
});

t.test('watch streams snapshots and ends when the sandbox is gone', async (t) => {
  const gw = await startGateway(t);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'watched' });
  const res = await fetch(`${gw.url}/v1/sandboxes/watched/watch`);
  t.equal(res.headers.get('content-type'), 'application/x-ndjson');
  const phases: string[] = [];
  const reader = (async () => {
    for await (const s of ndjson<Sandbox>(res.body as unknown as AsyncIterable<Uint8Array>)) {
      if (phases.at(-1) !== s.phase) phases.push(s.phase);
      if (s.phase === 'Ready') void api(gw.url, 'DELETE', '/v1/sandboxes/watched');
    }
  })();
  await reader;
  t.same(phases.slice(-2), ['Ready', 'Deleting']);
  t.equal((await api(gw.url, 'GET', '/v1/sandboxes/watched')).status, 404);
});

t.test('exec spools of sandboxes that were never deleted are swept when the driver lists', async (t) => {
  const gw = await startGateway(t);
  const driver = gw.app.openshell.driver as ProcessDriver;
  const orphan = driver.spoolDir('sbx_0rphan00000000');
  mkdirSync(orphan, { recursive: true });
  writeFileSync(join(orphan, 'ex_1.stdout'), 'left behind');
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'kept' });
  await waitForPhase(gw.app, 'kept', 'Ready');
  const kept = (await gw.app.openshell.sandboxes.getRecord('kept')).id;
  await driver.list();
  t.notOk(existsSync(orphan), 'orphaned spool removed');
  t.ok(existsSync(driver.spoolDir(kept)), 'a live sandbox keeps its spool');
});

t.test('a gateway closing while a delete is in flight leaves no spool directory behind', async (t) => {
  const gw = await startGateway(t);
  const driver = gw.app.openshell.driver as ProcessDriver;
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'going' });
  await waitForPhase(gw.app, 'going', 'Ready');
  const id = (await gw.app.openshell.sandboxes.getRecord('going')).id;
  const root = join(driver.spoolDir(id), '..');
  const deleting = driver.delete(id);
  await gw.app.close();
  await deleting;
  t.notOk(existsSync(driver.spoolDir(id)), 'the sandbox spool is removed');
  if (root.startsWith('/dev/shm/')) t.notOk(existsSync(root), 'the per-state-dir tmpfs root is removed once empty');
});

t.test('spools use /dev/shm only when it has room, else the state dir', async (t) => {
  const dir = tempDir(t);
  t.equal(shmRoot(dir, Number.MAX_SAFE_INTEGER), null, 'a tmpfs without room is not used');
  const root = shmRoot(dir, 0);
  if (root === null) {
    t.pass('no usable /dev/shm on this machine');
    return;
  }
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  t.ok(root.startsWith('/dev/shm/openshell-'), root);
  const driver = new ProcessDriver({ stateDir: dir, log: silentLogger, warmPool: 0, minShmFreeBytes: Number.MAX_SAFE_INTEGER });
  t.teardown(() => driver.close());
  t.ok(driver.spoolDir('sbx_0000000000000000').startsWith(join(dir, '')), 'spools fall back under the state dir');
});

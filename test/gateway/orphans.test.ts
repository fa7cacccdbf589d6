import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import type { Sandbox } from '../../src/schemas/sandbox.js';
import { allGone, api, startGateway, tempDir, waitForPhase, type Teardown } from '../helpers/gateway.js';
import { supervisorPid, supervisorsOf } from '../helpers/sandbox.js';

/** SIGKILLs whatever supervisors of these sandboxes are left when the test ends. */
function reap(t: Teardown, ids: string[]): void {
  t.teardown(() => {
    for (const id of ids) for (const pid of supervisorsOf(id)) process.kill(-pid, 'SIGKILL');
  });
}

t.test('a gateway on an in-memory store deletes its sandboxes when it stops', async (t) => {
  const gw = await startGateway(t, { db: 'sqlite::memory:' });
  const ids: string[] = [];
  reap(t, ids);
  for (const name of ['mem-a', 'mem-b']) ids.push((await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name })).body.id);
  await Promise.all(['mem-a', 'mem-b'].map((n) => waitForPhase(gw.app, n, 'Ready')));
  const pids = ids.map((id) => supervisorPid(gw.stateDir, id));
  await gw.app.close();
  t.ok(await allGone(pids, 10_000), 'no supervisor outlives the gateway');
  for (const id of ids) t.notOk(existsSync(join(gw.stateDir, 'sandboxes', id)), `${id}: its directory is removed`);
});

t.test('a gateway on a file store leaves its supervisors to the next one', async (t) => {
  const dir = tempDir(t);
  const gw = await startGateway(t, { stateDir: dir, db: `sqlite:${join(dir, 'openshell.db')}` });
  const { id } = (await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'kept' })).body;
  reap(t, [id]);
  await waitForPhase(gw.app, 'kept', 'Ready');
  const pid = supervisorPid(dir, id);
  await gw.app.close();
  t.notOk(await allGone([pid], 1500), 'the supervisor keeps running, to be adopted');
});

t.test('a supervisor whose sandbox directory is gone exits', async (t) => {
  const dir = tempDir(t);
  const gw = await startGateway(t, { stateDir: dir, db: `sqlite:${join(dir, 'openshell.db')}` });
  const { id } = (await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'homeless' })).body;
  reap(t, [id]);
  await waitForPhase(gw.app, 'homeless', 'Ready');
  const pid = supervisorPid(dir, id);
  await gw.app.close();
  rmSync(join(dir, 'sandboxes', id), { recursive: true, force: true });
  t.ok(await allGone([pid], 15_000), 'the supervisor exits');
});

t.test('a supervisor that the gateway does not know (session refused 401) exits', async (t) => {
  const dir = tempDir(t);
  const first = await startGateway(t, { stateDir: dir, db: `sqlite:${join(dir, 'openshell.db')}` });
  const { id } = (await api<Sandbox>(first.url, 'POST', '/v1/sandboxes', { name: 'unknown' })).body;
  reap(t, [id]);
  await waitForPhase(first.app, 'unknown', 'Ready');
  const pid = supervisorPid(dir, id);
  await first.app.close();
  // The same state dir (so the same socket the supervisor dials), a store that has never heard of it.
  await startGateway(t, { stateDir: dir, db: 'sqlite::memory:' });
  t.ok(await allGone([pid], 15_000), 'the supervisor exits');
  t.ok(existsSync(join(dir, 'sandboxes', id)), 'while its directory is still there');
});

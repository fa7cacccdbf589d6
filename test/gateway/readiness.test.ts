import { once } from 'node:events';
import t from 'tap';
import WebSocket from 'ws';
import { testConfig } from '../../src/config.js';
import { Gateway } from '../../src/gateway.js';
import { createDriver } from '../../src/drivers/index.js';
import { silentLogger } from '../../src/log.js';
import { SessionRegistry, type RegisteredSession } from '../../src/relay/sessions.js';
import type { Sandbox } from '../../src/schemas/sandbox.js';
import type { SandboxRecord } from '../../src/store/index.js';
import { api, proxySupervisors, running, startGateway, tempDir, waitForPhase } from '../helpers/gateway.js';
import { sandboxToken, supervisorPid } from '../helpers/sandbox.js';

t.test('supervisor SIGKILL → Error (the process is gone)', async (t) => {
  const gw = await startGateway(t);
  const s = (await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'victim' })).body;
  await waitForPhase(gw.app, 'victim', 'Ready');
  const pid = supervisorPid(gw.stateDir, s.id);
  process.kill(pid, 'SIGKILL');
  const failed = await waitForPhase(gw.app, 'victim', 'Error', 5000);
  t.match(failed.conditions[0].message, /supervisor process exited/);
  // The driver may see the exit as a zombie before Node reaps it: a zombie is gone.
  t.notOk(running(pid), 'the supervisor is gone');
});

t.test('connection lost → Provisioning/SupervisorDisconnected; reconnect → Ready', async (t) => {
  const gw = await startGateway(t);
  const proxy = await proxySupervisors(t, gw);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'flaky' });
  await waitForPhase(gw.app, 'flaky', 'Ready');
  proxy.pauseNew(true);
  proxy.resetAll();
  const down = await waitForPhase(gw.app, 'flaky', 'Provisioning', 5000);
  t.equal(down.conditions[0].reason, 'SupervisorDisconnected');
  proxy.pauseNew(false);
  const up = await waitForPhase(gw.app, 'flaky', 'Ready', 10_000);
  t.equal(up.conditions[0].reason, 'SupervisorConnected');
});

t.test('supersede: the old session’s late cleanup leaves the new one registered', async (t) => {
  const gw = await startGateway(t, { warmSupervisors: 0 });
  const s = (await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'twice' })).body;
  await waitForPhase(gw.app, 'twice', 'Ready');
  const token = sandboxToken(gw.stateDir, s.id);
  const url = `${gw.url.replace(/^http/, 'ws')}/v1/supervisor/session`;
  const registry = gw.app.openshell.sessions;
  const original = registry.get(s.id);

  const connect = async () => {
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` } });
    await once(ws, 'open');
    ws.send(JSON.stringify({ type: 'hello', sandboxId: s.id, version: 'test', capabilities: [] }));
    const [data] = (await once(ws, 'message')) as [Buffer];
    return { ws, welcome: JSON.parse(data.toString()) as { type: string; sessionId: string } };
  };
  const first = await connect();
  t.equal(first.welcome.type, 'welcome');
  t.not(first.welcome.sessionId, original?.sessionId, 'the test session superseded the supervisor’s');
  const firstClosed = once(first.ws, 'close');
  const second = await connect();
  const [code] = (await firstClosed) as [number];
  t.equal(code, 4409, 'the older session is closed as superseded');
  t.equal(registry.get(s.id)?.sessionId, second.welcome.sessionId);
  t.notOk(registry.removeIfCurrent(s.id, first.welcome.sessionId), 'late cleanup of the old session is a no-op');
  t.equal(registry.get(s.id)?.sessionId, second.welcome.sessionId, 'the newer session stays registered');
  t.equal((await gw.app.openshell.sandboxes.get('twice')).phase, 'Ready');
  second.ws.terminate();
});

t.test('registry: remove-if-current and waitForSession', async (t) => {
  const registry = new SessionRegistry();
  const closed: string[] = [];
  const session = (sessionId: string): RegisteredSession => ({
    sandboxId: 'sbx_1',
    sessionId,
    close: () => closed.push(sessionId),
  });
  const waiting = registry.waitForSession('sbx_1', 5000);
  registry.register(session('a'));
  t.equal((await waiting)?.sessionId, 'a', 'a waiter wakes when the session registers');
  registry.register(session('b'));
  t.same(closed, ['a']);
  t.notOk(registry.removeIfCurrent('sbx_1', 'a'));
  t.equal(registry.get('sbx_1')?.sessionId, 'b');
  t.ok(registry.removeIfCurrent('sbx_1', 'b'));
  t.equal(await registry.waitForSession('sbx_1', 150), null, 'times out with null');
});

t.test('register-before-store race: a session that registers before the row exists still promotes it', async (t) => {
  const stateDir = tempDir(t);
  const config = testConfig({ stateDir });
  const gateway = new Gateway(config, silentLogger, { driver: await createDriver(config, silentLogger) });
  t.teardown(() => gateway.close());
  await gateway.start();
  const id = 'sbx_race0000000000';
  // The session arrives first (e.g. a supervisor of a store row another replica is still writing).
  gateway.sessions.register({ sandboxId: id, sessionId: 'ses_early', close() {} } as never);
  await gateway.store.insert(storeRow(id, 'racer'));
  const record = await gateway.sandboxes.reconcile(id);
  t.equal(record?.phase, 'Ready');
  t.equal(record?.condition.reason, 'SupervisorConnected');
  // And Error is never overwritten by session events.
  await gateway.sandboxes.markError(id, 'WorkloadFailed', 'gone');
  gateway.sessions.register({ sandboxId: id, sessionId: 'ses_late', close() {} } as never);
  t.equal((await gateway.sandboxes.reconcile(id))?.phase, 'Error');
});

t.test('compare-and-set: concurrent writers never lose each other’s updates', async (t) => {
  const stateDir = tempDir(t);
  const config = testConfig({ stateDir, db: `sqlite:${stateDir}/cas.db` });
  const gateway = new Gateway(config, silentLogger, { driver: await createDriver(config, silentLogger) });
  t.teardown(() => gateway.close());
  const rec = await gateway.store.insert(storeRow('sbx_cas', 'cas'));
  const a = await gateway.store.update(rec.id, rec.resourceVersion, { labels: { a: '1' } });
  const b = await gateway.store.update(rec.id, rec.resourceVersion, { labels: { b: '1' } });
  t.ok(a);
  t.equal(b, null, 'a stale writer is refused');
  await Promise.all(Array.from({ length: 20 }, (_, i) => gateway.sandboxes.setMainProcess(rec.id, {
    state: 'Exited', exitCode: i, signal: null,
  })));
  const final = await gateway.store.get(rec.id);
  t.equal(final?.resourceVersion, 22, 'every one of 20 concurrent writes landed');
});

/** A Provisioning row as the gateway would insert it. */
function storeRow(id: string, name: string): Omit<SandboxRecord, 'resourceVersion'> {
  const now = new Date().toISOString();
  return {
    id,
    name,
    driver: 'process',
    image: null,
    command: [],
    env: {},
    labels: {},
    policy: null,
    policyVersion: 1,
    tokenHash: id.padEnd(64, 'x'),
    phase: 'Provisioning',
    condition: { type: 'Ready', status: 'False', reason: 'Provisioning', message: '', lastTransitionTime: now },
    mainProcess: { state: 'Pending', exitCode: null, signal: null },
    createdAt: now,
    expiresAt: null,
  };
}

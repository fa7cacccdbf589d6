import t from 'tap';
import WebSocket from 'ws';
import type { ExecEvent, Sandbox } from '../../src/schemas/sandbox.js';
import { execStream, type ExecOutcome } from '../helpers/exec.js';
import { api, proxySupervisors, startGateway, waitForPhase } from '../helpers/gateway.js';
import { fakeSession, sandboxToken, supervisorPid } from '../helpers/sandbox.js';

/** Window 0: a lost relay ends the exec at once (transparent resume has its own suite, resume.test.ts). */
const KEEPALIVE = { keepaliveIntervalMs: 500, keepaliveTimeoutMs: 1500, execResumeWindowMs: 0 };
/** Cold-started supervisors carry their token in the environment, where a test can read it. */
const COLD = { ...KEEPALIVE, warmSupervisors: 0 };

/** Starts an exec and resolves once it has printed its first line (so it is surely running). */
async function quietExec(url: string, name: string, command: string[]) {
  let startedResolve: () => void = () => undefined;
  const started = new Promise<void>((r) => (startedResolve = r));
  let endedAt = 0;
  const done = execStream(url, name, { command }, {
    onEvent: (e: ExecEvent) => {
      if (e.type === 'stdout') startedResolve();
    },
  }).then((r: ExecOutcome) => {
    endedAt = Date.now();
    return r;
  });
  await started;
  return { done, endedAt: () => endedAt };
}

t.test('black-holed transport: 10 quiet execs end within the keepalive timeout + 1 s; then all recovers', async (t) => {
  const gw = await startGateway(t, KEEPALIVE);
  const proxy = await proxySupervisors(t, gw);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'nat' });
  await waitForPhase(gw.app, 'nat', 'Ready');
  const execs = await Promise.all(
    Array.from({ length: 10 }, () => quietExec(gw.url, 'nat', ['sh', '-c', 'echo go; sleep 20'])),
  );
  t.equal(gw.app.openshell.broker.openCount, 10, '10 relays open');
  const holedAt = Date.now();
  proxy.blackhole();
  const results = await Promise.all(execs.map((e) => e.done));
  const worst = Math.max(...execs.map((e) => e.endedAt() - holedAt));
  for (const r of results) t.match(r.last, { type: 'error', code: 'RELAY_LOST' });
  t.ok(worst <= KEEPALIVE.keepaliveTimeoutMs + 1000, `every exec ended within ${worst} ms`);

  proxy.restore();
  await waitForPhase(gw.app, 'nat', 'Ready', 15_000);
  const fresh = await execStream(gw.url, 'nat', { command: ['echo', 'again'] });
  t.equal(fresh.stdout.toString(), 'again\n');
  t.equal(gw.app.openshell.broker.pendingCount, 0, 'no relays pending');
});

t.test('supervisor SIGKILL mid-exec → error promptly', async (t) => {
  const gw = await startGateway(t, KEEPALIVE);
  const s = (await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'dies' })).body;
  await waitForPhase(gw.app, 'dies', 'Ready');
  const exec = await quietExec(gw.url, 'dies', ['sh', '-c', 'echo go; sleep 20']);
  const killedAt = Date.now();
  process.kill(supervisorPid(gw.stateDir, s.id), 'SIGKILL');
  const r = await exec.done;
  t.match(r.last, { type: 'error', code: 'RELAY_LOST' });
  t.ok(exec.endedAt() - killedAt <= KEEPALIVE.keepaliveTimeoutMs + 1000, `ended after ${exec.endedAt() - killedAt} ms`);
});

t.test('relay socket reset (RST) → error promptly', async (t) => {
  const gw = await startGateway(t, KEEPALIVE);
  const proxy = await proxySupervisors(t, gw);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'rst' });
  await waitForPhase(gw.app, 'rst', 'Ready');
  const exec = await quietExec(gw.url, 'rst', ['sh', '-c', 'echo go; sleep 20']);
  const resetAt = Date.now();
  proxy.resetAll();
  const r = await exec.done;
  t.match(r.last, { type: 'error', code: 'RELAY_LOST' });
  t.ok(exec.endedAt() - resetAt <= 1000, `ended after ${exec.endedAt() - resetAt} ms`);
});

t.test('a superseded session takes its relays down with it', async (t) => {
  const gw = await startGateway(t, COLD);
  const s = (await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'sup' })).body;
  await waitForPhase(gw.app, 'sup', 'Ready');
  const exec = await quietExec(gw.url, 'sup', ['sh', '-c', 'echo go; sleep 20']);
  const { ws } = await fakeSession(t, gw, s.id, 'test');
  const r = await exec.done;
  t.match(r.last, { type: 'error', code: 'RELAY_LOST' });
});

t.test('caps: 64 relay opens at a sandbox that never claims → 32 accepted, 32 429; another sandbox unaffected', async (t) => {
  const gw = await startGateway(t, COLD);
  gw.app.openshell.broker.setPendingTtlMs(2000);
  const s = (await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'mute' })).body;
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'other' });
  await waitForPhase(gw.app, 'mute', 'Ready');
  await waitForPhase(gw.app, 'other', 'Ready');
  // Replace mute's supervisor session with one that answers nothing (it never claims a relay).
  const { ws } = await fakeSession(t, gw, s.id, 'mute');
  process.kill(supervisorPid(gw.stateDir, s.id), 'SIGSTOP');
  t.teardown(() => process.kill(supervisorPid(gw.stateDir, s.id), 'SIGCONT'));

  const statuses = await Promise.all(
    Array.from({ length: 64 }, async () => {
      const res = await fetch(`${gw.url}/v1/sandboxes/mute/exec`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ command: ['true'] }),
      });
      await res.arrayBuffer();
      return res.status;
    }),
  );
  t.equal(statuses.filter((s) => s === 429).length, 32, '32 rejected with 429');
  t.equal(statuses.filter((s) => s === 503).length, 32, '32 accepted, then expired unclaimed');
  const other = await execStream(gw.url, 'other', { command: ['echo', 'fine'] });
  t.equal(other.stdout.toString(), 'fine\n', 'another sandbox still accepted');
  t.equal(gw.app.openshell.broker.pendingCount, 0, 'unclaimed relays reaped');
});

t.test('a relay WebSocket presented with another sandbox’s token is refused', async (t) => {
  const gw = await startGateway(t, COLD);
  const a = (await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'own-a' })).body;
  const b = (await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'own-b' })).body;
  await waitForPhase(gw.app, 'own-a', 'Ready');
  await waitForPhase(gw.app, 'own-b', 'Ready');
  // Freeze A's supervisor so its relay stays pending, then try to claim it with B's token.
  const pidA = supervisorPid(gw.stateDir, a.id);
  process.kill(pidA, 'SIGSTOP');
  t.teardown(() => process.kill(pidA, 'SIGCONT'));
  const opening = gw.app.openshell.broker.open(a.id, 'exec').catch((e: Error) => e);
  const channelId = await new Promise<string>((resolve) => {
    const check = () => {
      const id = gw.app.openshell.broker.pendingChannels(a.id)[0];
      if (id) resolve(id);
      else setImmediate(check);
    };
    check();
  });
  const claim = (token: string) => {
    const ws = new WebSocket(`${gw.url.replace(/^http/, 'ws')}/v1/supervisor/relay/${channelId}`, {
      headers: { authorization: `Bearer ${token}` },
    });
    ws.on('error', () => undefined);
    return new Promise<number>((resolve) => {
      ws.once('unexpected-response', (_req, res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      ws.once('open', () => {
        ws.terminate();
        resolve(101);
      });
    });
  };
  t.equal(await claim(sandboxToken(gw.stateDir, b.id)), 403, "B's token cannot claim A's relay");
  t.equal(await claim('ost_nonsense'), 401);
  t.equal(gw.app.openshell.broker.pendingFor(a.id), 1, 'the relay is still pending for its owner');
  process.kill(pidA, 'SIGCONT');
  const ws = await opening;
  t.notOk(ws instanceof Error, 'the owner claims it');
  if (!(ws instanceof Error)) ws.terminate();
});

t.test('relayClose from the supervisor fails a pending open at once', async (t) => {
  const gw = await startGateway(t, COLD);
  const s = (await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'refuses' })).body;
  await waitForPhase(gw.app, 'refuses', 'Ready');
  // A session that answers every relayOpen with relayClose.
  const { ws } = await fakeSession(t, gw, s.id, 'refuser');
  ws.on('message', (data: Buffer) => {
    const msg = JSON.parse(data.toString()) as { type: string; channelId: string };
    if (msg.type === 'relayOpen') ws.send(JSON.stringify({ type: 'relayClose', channelId: msg.channelId, reason: 'no thanks' }));
  });
  const started = Date.now();
  const res = await api<{ error: { code: string; message: string } }>(gw.url, 'POST', '/v1/sandboxes/refuses/exec', { command: ['true'] });
  t.equal(res.status, 502);
  t.equal(res.body.error.code, 'RELAY_LOST');
  t.match(res.body.error.message, /no thanks/);
  t.ok(Date.now() - started < 5000, 'not left waiting for the 10 s expiry');
  t.equal(gw.app.openshell.broker.pendingCount, 0);
});

t.test('a caller that stops reading for longer than the keepalive timeout still gets every byte and the exit', async (t) => {
  const gw = await startGateway(t, KEEPALIVE);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'slow' });
  await waitForPhase(gw.app, 'slow', 'Ready');
  const { request } = await import('node:http');
  const size = 32 * 1024 * 1024;
  const res = await new Promise<import('node:http').IncomingMessage>((resolve, reject) => {
    const req = request(`${gw.url}/v1/sandboxes/slow/exec`, { method: 'POST', headers: { 'content-type': 'application/json' } }, resolve);
    req.on('error', reject);
    req.end(JSON.stringify({ command: ['head', '-c', String(size), '/dev/zero'] }));
  });
  res.pause();
  // Stall well past the 1.5 s keepalive timeout while the output backs up through both relays.
  await new Promise((r) => setTimeout(r, 4000));
  let buffer = '';
  let bytes = 0;
  let last: { type: string; exitCode?: number; code?: string } | undefined;
  for await (const chunk of res) {
    buffer += (chunk as Buffer).toString('latin1');
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const event = JSON.parse(buffer.slice(0, nl)) as { type: string; data?: string; exitCode?: number; code?: string };
      buffer = buffer.slice(nl + 1);
      if (event.type === 'stdout') bytes += Buffer.from(event.data ?? '', 'base64').length;
      last = event;
    }
  }
  t.equal(bytes, size, 'every byte delivered');
  t.match(last, { type: 'exit', exitCode: 0 }, 'and the real exit, not RELAY_LOST');
});

t.test('a command that reads its stdin late (past the keepalive timeout) still gets all of it', async (t) => {
  const gw = await startGateway(t, KEEPALIVE);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'late' });
  await waitForPhase(gw.app, 'late', 'Ready');
  const stdin = Buffer.alloc(4 * 1024 * 1024, 7);
  const r = await execStream(gw.url, 'late', { command: ['sh', '-c', 'sleep 4; wc -c'], stdin: stdin.toString('base64') });
  t.equal(r.stdout.toString().trim(), String(stdin.length));
  t.match(r.last, { type: 'exit', exitCode: 0 });
});

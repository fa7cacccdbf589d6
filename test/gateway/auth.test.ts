import { once } from 'node:events';
import t from 'tap';
import WebSocket from 'ws';
import type { Sandbox } from '../../src/schemas/sandbox.js';
import { api, startGateway, waitForPhase } from '../helpers/gateway.js';
import { sandboxToken } from '../helpers/sandbox.js';

function wsUrl(base: string, path: string): string {
  return base.replace(/^http/, 'ws') + path;
}

async function upgradeStatus(url: string, headers: Record<string, string>): Promise<number> {
  const ws = new WebSocket(url, { headers });
  ws.on('error', () => undefined);
  const [, res] = (await once(ws, 'unexpected-response')) as [unknown, { statusCode: number; resume(): void }];
  res.resume();
  ws.terminate();
  return res.statusCode;
}

t.test('supervisor session: no token or a wrong token → 401', async (t) => {
  const gw = await startGateway(t);
  const url = wsUrl(gw.url, '/v1/supervisor/session');
  t.equal(await upgradeStatus(url, {}), 401);
  t.equal(await upgradeStatus(url, { authorization: 'Bearer ost_wrong' }), 401);
  t.equal(await upgradeStatus(url, { authorization: 'Basic abc' }), 401);
});

t.test("a valid token for sandbox A saying hello as B is refused", async (t) => {
  // Cold-started supervisors carry their token in the environment, where the test can read it.
  const gw = await startGateway(t, { warmSupervisors: 0 });
  const a = (await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'sbx-a' })).body;
  const b = (await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'sbx-b' })).body;
  await waitForPhase(gw.app, 'sbx-a', 'Ready');
  await waitForPhase(gw.app, 'sbx-b', 'Ready');
  const tokenA = sandboxToken(gw.stateDir, a.id);

  const ws = new WebSocket(wsUrl(gw.url, '/v1/supervisor/session'), { headers: { authorization: `Bearer ${tokenA}` } });
  await once(ws, 'open');
  ws.send(JSON.stringify({ type: 'hello', sandboxId: b.id, version: 'test', capabilities: [] }));
  const [code] = (await once(ws, 'close')) as [number];
  t.equal(code, 4403, 'closed with PERMISSION_DENIED');
  const sessionB = gw.app.openshell.sessions.get(b.id);
  t.ok(sessionB, 'B keeps its own session');
  t.equal((await gw.app.openshell.sandboxes.get('sbx-b')).phase, 'Ready');
});

t.test('--auth-token guards /v1 but not /healthz', async (t) => {
  const gw = await startGateway(t, { authToken: 'sekret-token' });
  t.equal((await api(gw.url, 'GET', '/v1/sandboxes')).status, 401);
  const wrong = await api<{ error: { code: string } }>(gw.url, 'GET', '/v1/sandboxes', undefined, {
    authorization: 'Bearer nope',
  });
  t.equal(wrong.status, 401);
  t.equal(wrong.body.error.code, 'UNAUTHENTICATED');
  const ok = await api(gw.url, 'GET', '/v1/sandboxes', undefined, { authorization: 'Bearer sekret-token' });
  t.equal(ok.status, 200);
  t.equal((await api(gw.url, 'GET', '/healthz')).status, 200);
  // Supervisors authenticate with their own token, not the API token.
  const created = await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'guarded' }, {
    authorization: 'Bearer sekret-token',
  });
  t.equal(created.status, 201);
  await waitForPhase(gw.app, 'guarded', 'Ready');
});

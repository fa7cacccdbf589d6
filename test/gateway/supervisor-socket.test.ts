import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import t from 'tap';
import type { Sandbox } from '../../src/schemas/sandbox.js';
import { execStream } from '../helpers/exec.js';
import { api, startGateway, tempDir, waitForPhase } from '../helpers/gateway.js';
import { processEnv, supervisorPid } from '../helpers/sandbox.js';

/** Cold-started supervisors carry their endpoint in the environment, where a test can read it. */
const COLD = { warmSupervisors: 0 };

/** One HTTP/1.1 request over a Unix socket: status and body. */
function overSocket(socketPath: string, path: string, headers: Record<string, string> = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

t.test('process driver: supervisors dial the gateway over a 0600 Unix socket in the state dir', async (t) => {
  const gw = await startGateway(t, COLD);
  const sock = join(gw.stateDir, 'gateway.sock');
  t.equal(gw.app.openshell.endpoint, `unix:${sock}`);
  t.ok(statSync(sock).isSocket(), 'the socket exists');
  t.equal(statSync(sock).mode & 0o777, 0o600, 'mode 0600');

  const s = (await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'local' })).body;
  await waitForPhase(gw.app, 'local', 'Ready');
  t.equal(processEnv(supervisorPid(gw.stateDir, s.id), 'OPENSHELL_ENDPOINT'), `unix:${sock}`, 'the supervisor was given the socket');
  const r = await execStream(gw.url, 'local', { command: ['sh', '-c', 'echo over-unix; echo err >&2'] });
  t.equal(r.stdout.toString(), 'over-unix\n');
  t.equal(r.stderr.toString(), 'err\n');
  t.match(r.last, { type: 'exit', exitCode: 0 });

  const api404 = await overSocket(sock, '/v1/sandboxes');
  t.equal(api404.status, 404, 'the public API is not served on the socket');
  t.match(JSON.parse(api404.body), { error: { code: 'NOT_FOUND' } });
  const noToken = await overSocket(sock, '/v1/supervisor/session');
  t.equal(noToken.status, 401, 'supervisor routes still want a sandbox token');

  await gw.app.openshell.driver.delete(s.id); // closing the app here leaves the teardown no store to find it in
  await gw.app.close();
  t.notOk(existsSync(sock), 'the socket file is removed on close');
});

t.test('--sandbox-endpoint, --supervisor-socket=false and an unusable path keep supervisors on TCP', async (t) => {
  const explicit = await startGateway(t, { sandboxEndpoint: 'http://127.0.0.1:9' });
  t.equal(explicit.app.openshell.endpoint, 'http://127.0.0.1:9');
  t.notOk(existsSync(join(explicit.stateDir, 'gateway.sock')), 'no socket when an endpoint is configured');

  const off = await startGateway(t, { supervisorSocket: false });
  t.equal(off.app.openshell.endpoint, off.url);

  const dir = tempDir(t);
  writeFileSync(join(dir, 'gateway.sock'), 'not a socket');
  const blocked = await startGateway(t, { ...COLD, stateDir: dir });
  t.equal(blocked.app.openshell.endpoint, blocked.url, 'a regular file in the way: TCP');
  t.equal(readFileSync(join(dir, 'gateway.sock'), 'utf8'), 'not a socket', 'and the file is left alone');
  await api(blocked.url, 'POST', '/v1/sandboxes', { name: 'tcp' });
  await waitForPhase(blocked.app, 'tcp', 'Ready');
  const r = await execStream(blocked.url, 'tcp', { command: ['echo', 'over-tcp'] });
  t.equal(r.stdout.toString(), 'over-tcp\n');
});

t.test('a stale socket left by a gateway that died is replaced', async (t) => {
  const dir = tempDir(t);
  const sock = join(dir, 'gateway.sock');
  // A process that dies by SIGKILL leaves its socket file behind, with nobody accepting on it.
  spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(sock)}, () => process.kill(process.pid, 'SIGKILL'))`]);
  t.ok(statSync(sock).isSocket(), 'a dead socket file is in place');
  const gw = await startGateway(t, { stateDir: dir });
  t.equal(gw.app.openshell.endpoint, `unix:${sock}`, 'the new gateway took the path over');
  const live = await overSocket(sock, '/v1/supervisor/session');
  t.equal(live.status, 401, 'and serves on it');
});

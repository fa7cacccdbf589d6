import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t, { type Test } from 'tap';
import { WebSocket } from 'ws';
import { packageRoot } from '../../src/paths.js';
import type { Sandbox } from '../../src/schemas/sandbox.js';
import { dockerEngine, IMAGES, MARKER, type Engine } from '../helpers/docker.js';
import { api, startGateway, tempDir, waitForPhase, waitForSandbox, type TestGateway } from '../helpers/gateway.js';
import { killHard, spawnGateway } from '../helpers/gateway-process.js';

const run = promisify(execFile);
const cli = join(packageRoot(), 'bin', 'openshell.js');

const engine = await dockerEngine();
if ('skip' in engine) {
  t.comment(`docker driver tests skipped: ${engine.skip}`);
  t.plan(0, engine.skip);
} else {
  await tests(engine);
}

interface ExecJson {
  exitCode: number;
  stdout: string;
  stderr: string;
}

async function exec(gw: TestGateway, name: string, command: string[] | string): Promise<ExecJson> {
  const res = await api<ExecJson>(gw.url, 'POST', `/v1/sandboxes/${name}/exec`, { command }, { accept: 'application/json' });
  if (res.status !== 200) throw new Error(`exec ${JSON.stringify(command)}: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}

/** Waits for a sandbox's phase through the API (for gateways in another process), polling at 100 ms. */
async function phaseOverHttp(url: string, name: string, phase: string, timeoutMs: number): Promise<Sandbox> {
  let last: Sandbox | undefined;
  const ok = await waitUntil(async () => {
    last = (await api<Sandbox>(url, 'GET', `/v1/sandboxes/${name}`)).body;
    return last.phase === phase;
  }, timeoutMs);
  if (!ok) throw new Error(`${name} not ${phase} in ${timeoutMs} ms: ${JSON.stringify(last?.conditions)}`);
  return last as Sandbox;
}

async function waitUntil(check: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
  return true;
}

async function containerOf(engine: Engine, sandboxId: string): Promise<string> {
  return (await engine.docker('ps', '-aq', '--no-trunc', '--filter', `label=openshell.sandbox.id=${sandboxId}`)).trim();
}

async function tests(engine: Engine): Promise<void> {
  const gateway = (t: Test, overrides = {}) =>
    startGateway(t, { driver: 'docker', dockerHost: engine.host, dockerNetwork: 'host', defaultImage: IMAGES.debian, ...overrides });

  for (const [kind, image] of Object.entries(IMAGES)) {
    t.test(`create → Ready in the ${kind} image (no Node in it); exec runs inside the container`, async (t) => {
      const gw = await gateway(t);
      const name = `sbx-${kind}`;
      const created = await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name, image });
      t.equal(created.status, 201);
      const ready = await waitForPhase(gw.app, name, 'Ready', 30_000);
      t.equal(ready.driver, 'docker');
      const id = await containerOf(engine, ready.id);
      t.ok(id, 'one container carries the sandbox id label');
      const marker = await exec(gw, name, ['cat', MARKER]);
      t.equal(marker.stdout, `openshell-test image ${kind}\n`, 'the marker baked into the image');
      t.equal(marker.exitCode, 0);
      const failing = await exec(gw, name, 'echo out; echo err >&2; exit 7');
      t.same([failing.exitCode, failing.stdout, failing.stderr], [7, 'out\n', 'err\n']);

      const [inspect] = JSON.parse(await engine.docker('inspect', id)) as [ContainerInspect];
      t.notOk(inspect.HostConfig.Privileged, 'never privileged');
      t.same(inspect.HostConfig.CapDrop, ['ALL']);
      t.notOk(inspect.Config.Env.some((e) => e.startsWith('OPENSHELL_SANDBOX_TOKEN=')), 'no token in the inspectable env');
      t.ok(inspect.Config.Env.includes('OPENSHELL_BUNDLE_DIR=/opt/openshell'));
      t.equal(inspect.Config.Labels['openshell.sandbox.name'], name);
      t.ok(inspect.Mounts.some((m) => m.Destination === '/opt/openshell' && !m.RW), 'bundle mounted read-only');
    });
  }

  t.test('the sandbox is confined inside the container: not root, no capabilities, no way to the gateway around the proxy', async (t) => {
    const gw = await gateway(t);
    await api(gw.url, 'POST', '/v1/sandboxes', { name: 'sbx-confined', image: IMAGES.debian });
    await waitForPhase(gw.app, 'sbx-confined', 'Ready', 30_000);
    const isolated = await waitForSandbox(gw.app, 'sbx-confined', (s) => s.conditions.some((c) => c.type === 'Isolated'), 'Isolated', 10_000);
    t.match(isolated.conditions.find((c) => c.type === 'Isolated'), { status: 'True', reason: 'namespaces' });
    const port = new URL(gw.url).port;
    const probe = await exec(gw, 'sbx-confined', [
      'bash',
      '-c',
      [
        'echo "uid $(id -u)"',
        "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status",
        `(exec 3<>/dev/tcp/127.0.0.1/${port}) 2>/dev/null && echo "gateway port open" || echo "gateway port closed"`,
        'ls /run/openshell-gateway /run/openshell-secret 2>/dev/null || echo "no gateway socket, no secret"',
        'kill -9 1 2>/dev/null && echo "killed pid 1" || echo "pid 1 survives"',
        'ps -e -o comm= 2>/dev/null | grep -c openshell-super || true',
      ].join('; '),
    ]);
    t.comment(probe.stdout + probe.stderr);
    t.notMatch(probe.stdout, /^uid 0$/m, 'not root');
    t.match(probe.stdout, /CapEff:\s+0+\n/);
    t.match(probe.stdout, /CapBnd:\s+0+\n/);
    t.match(probe.stdout, /NoNewPrivs:\s+1/);
    t.match(probe.stdout, /gateway port closed/, 'no direct TCP to the gateway, even on the host network');
    t.match(probe.stdout, /no gateway socket, no secret/);
    t.equal((await exec(gw, 'sbx-confined', ['echo', 'still'])).stdout, 'still\n', 'the supervisor still serves');
  });

  t.test('WebSocket exec with a tty, file upload and download, and OpenSSH run inside the container', async (t) => {
    const gw = await gateway(t);
    const name = 'sbx-io';
    await api(gw.url, 'POST', '/v1/sandboxes', { name, image: IMAGES.busybox });
    await waitForPhase(gw.app, name, 'Ready', 30_000);

    const ws = new WebSocket(`${gw.url.replace(/^http/, 'ws')}/v1/sandboxes/${name}/exec?command=sh&tty=true&cols=80&rows=24`);
    t.teardown(() => ws.terminate());
    await once(ws, 'open');
    let output = '';
    let status: Record<string, unknown> | undefined;
    const closed = once(ws, 'close');
    ws.on('message', (data: Buffer) => {
      if (data[0] === 1 || data[0] === 2) output += data.subarray(1).toString();
      if (data[0] === 3) status = JSON.parse(data.subarray(1).toString()) as Record<string, unknown>;
    });
    const until = (pattern: RegExp) =>
      new Promise<void>((resolve) => {
        const check = () => pattern.test(output) && (ws.off('message', check), resolve());
        ws.on('message', check);
        check();
      });
    const send = (channel: number, payload: string) => ws.send(Buffer.concat([Buffer.from([channel]), Buffer.from(payload)]));
    send(0, `test -t 0 && echo "on a $(echo tty)"; cat ${MARKER}\n`);
    await until(/openshell-test image busybox/);
    t.match(output, /on a tty/, 'a real tty in the container');
    send(0, 'exit 4\n');
    await closed;
    t.match(status, { exitCode: 4 });

    const body = 'uploaded into the container\n';
    const put = await fetch(new URL(`/v1/sandboxes/${name}/files?path=/tmp/upload.txt`, gw.url), { method: 'PUT', body });
    t.ok(put.ok, `upload: ${put.status}`);
    t.equal((await exec(gw, name, ['cat', '/tmp/upload.txt'])).stdout, body, 'the file is in the container');
    const got = await fetch(new URL(`/v1/sandboxes/${name}/files?path=${MARKER}`, gw.url));
    t.equal(await got.text(), 'openshell-test image busybox\n', 'download reads the container');

    const { stdout: config } = await run(process.execPath, [cli, 'sandbox', 'ssh-config', name, '--gateway', gw.url]);
    const file = join(tempDir(t), 'ssh_config');
    writeFileSync(file, config);
    const ssh = await run('ssh', ['-F', file, name, `cat ${MARKER}`], { timeout: 30_000 });
    t.equal(ssh.stdout, 'openshell-test image busybox\n', 'ssh ran in the container');
  });

  t.test('docker kill → Error with the exit code; delete removes the container and its directory', async (t) => {
    const gw = await gateway(t);
    await api(gw.url, 'POST', '/v1/sandboxes', { name: 'sbx-kill' });
    const ready = await waitForPhase(gw.app, 'sbx-kill', 'Ready', 30_000);
    const id = await containerOf(engine, ready.id);
    const started = Date.now();
    await engine.docker('kill', id);
    const failed = await waitForPhase(gw.app, 'sbx-kill', 'Error', 10_000);
    t.ok(Date.now() - started < 10_000, `Error after ${Date.now() - started} ms`);
    t.match(failed.conditions[0]?.message, /exited with code 137/);

    await api(gw.url, 'POST', '/v1/sandboxes', { name: 'sbx-del', image: IMAGES.busybox });
    const del = await waitForPhase(gw.app, 'sbx-del', 'Ready', 30_000);
    const dir = join(gw.stateDir, 'docker', del.id);
    t.ok(existsSync(dir), 'per-sandbox directory while it lives');
    const res = await api(gw.url, 'DELETE', '/v1/sandboxes/sbx-del');
    t.equal(res.status, 200);
    await gw.app.openshell.sandboxes.deleted(del.id);
    t.equal(await containerOf(engine, del.id), '', 'container gone');
    t.notOk(existsSync(dir), 'per-sandbox directory gone');
    t.equal((await api(gw.url, 'GET', '/v1/sandboxes/sbx-del')).status, 404);
  });

  t.test('a missing image → Error naming the image, within a bounded time', async (t) => {
    const gw = await gateway(t);
    const image = 'openshell-test/no-such-image:1';
    const started = Date.now();
    await api(gw.url, 'POST', '/v1/sandboxes', { name: 'sbx-missing', image });
    const failed = await waitForPhase(gw.app, 'sbx-missing', 'Error', 60_000);
    t.match(failed.conditions[0]?.message, image);
    t.comment(`Error after ${Date.now() - started} ms: ${failed.conditions[0]?.message}`);
  });

  t.test('resources become container limits; a memory hog is killed at the limit and the supervisor keeps serving', async (t) => {
    const gw = await gateway(t);
    const resources = { cpus: 0.5, memoryMb: 160, pids: 64 };
    await api(gw.url, 'POST', '/v1/sandboxes', { name: 'sbx-limits', resources });
    const ready = await waitForPhase(gw.app, 'sbx-limits', 'Ready', 30_000);
    const [inspect] = JSON.parse(await engine.docker('inspect', await containerOf(engine, ready.id))) as [ContainerInspect];
    t.equal(inspect.HostConfig.Memory, 160 * 1024 * 1024);
    t.equal(inspect.HostConfig.NanoCpus, 500_000_000);
    t.equal(inspect.HostConfig.PidsLimit, 64);
    // tail holds the whole "line" of /dev/zero: it grows until the cgroup's OOM killer ends it.
    const hog = await exec(gw, 'sbx-limits', ['sh', '-c', 'tail /dev/zero; echo "status $?"']);
    t.match(hog.stdout, /status 137/, 'the hog was SIGKILLed');
    t.equal((await exec(gw, 'sbx-limits', ['echo', 'alive'])).stdout, 'alive\n', 'the sandbox still serves');
    t.equal((await api<Sandbox>(gw.url, 'GET', '/v1/sandboxes/sbx-limits')).body.phase, 'Ready');

    const tooMany = await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'sbx-cpus', resources: { cpus: 512 } });
    const failed = await waitForPhase(gw.app, 'sbx-cpus', 'Error', 5_000);
    t.match(failed.conditions[0]?.message, /resources\.cpus/, `refused before the engine: ${tooMany.status}`);
    await api(gw.url, 'POST', '/v1/sandboxes', { name: 'sbx-disk', resources: { diskMb: 512 } });
    const disk = await waitForPhase(gw.app, 'sbx-disk', 'Error', 5_000);
    t.comment(disk.conditions[0]?.message);
    t.match(disk.conditions[0]?.message, /resources\.diskMb/);
  });

  t.test('kill -9 of the gateway and a restart on the same state dir: the same containers re-adopted, Ready within 10 s', async (t) => {
    const stateDir = tempDir(t);
    const args = ['--port', '0', '--state-dir', stateDir, '--driver', 'docker', '--docker-host', engine.host, '--docker-network', 'host', '--default-image', IMAGES.busybox];
    const first = await spawnGateway(t, args);
    const names = ['sbx-adopt-a', 'sbx-adopt-b'];
    const ids: string[] = [];
    for (const name of names) ids.push((await api<Sandbox>(first.url, 'POST', '/v1/sandboxes', { name })).body.id);
    for (const name of names) await phaseOverHttp(first.url, name, 'Ready', 30_000);
    const before = await Promise.all(ids.map((id) => containerOf(engine, id)));
    await killHard(first.child);
    const second = await spawnGateway(t, args);
    t.teardown(async () => {
      for (const name of names) await api(second.url, 'DELETE', `/v1/sandboxes/${name}`);
      for (const id of ids) await waitUntil(async () => (await containerOf(engine, id)) === '', 15_000);
    });
    const started = Date.now();
    for (const name of names) await phaseOverHttp(second.url, name, 'Ready', 10_000);
    t.ok(Date.now() - started < 10_000, `re-adopted Ready in ${Date.now() - started} ms`);
    const after = await Promise.all(ids.map((id) => containerOf(engine, id)));
    t.same(after, before, 'the same containers, none duplicated');
    t.equal((await exec({ url: second.url } as TestGateway, names[0] as string, ['cat', MARKER])).stdout, 'openshell-test image busybox\n');
  });
}

interface ContainerInspect {
  Config: { Env: string[]; Labels: Record<string, string> };
  HostConfig: { Privileged: boolean; CapDrop: string[]; CapAdd: string[]; Memory: number; NanoCpus: number; PidsLimit: number };
  Mounts: Array<{ Destination: string; RW: boolean; Source: string }>;
  State: { Running: boolean; ExitCode: number; OOMKilled: boolean };
}

import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t, { type Test } from 'tap';
import { WebSocket } from 'ws';
import { packageRoot } from '../../src/paths.js';
import type { Sandbox } from '../../src/schemas/sandbox.js';
import { dockerEngine, IMAGES, MARKER, type Engine } from '../helpers/docker.js';
import { api, startGateway, tempDir, waitForPhase, waitForSandbox, type TestGateway } from '../helpers/gateway.js';

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
}

interface ContainerInspect {
  Config: { Env: string[]; Labels: Record<string, string> };
  HostConfig: { Privileged: boolean; CapDrop: string[]; CapAdd: string[]; Memory: number; NanoCpus: number; PidsLimit: number };
  Mounts: Array<{ Destination: string; RW: boolean; Source: string }>;
  State: { Running: boolean; ExitCode: number; OOMKilled: boolean };
}

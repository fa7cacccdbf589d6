/**
 * The Dockerfile and docker-compose.yml on the test engine: the image builds
 * from a locally made base (the test Debian image with this machine's node
 * and npm: no registry here), compose accepts the file, and `docker-compose
 * up` of it serves /healthz and creates a sandbox through the CLI.
 */
import { execFile, spawn } from 'node:child_process';
import { copyFileSync, cpSync, mkdirSync, realpathSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { freePort } from '../../bench/ports.js';
import { packageRoot } from '../../src/paths.js';
import { DOCKER_HOST, dockerEngine, IMAGE_VERSION, IMAGES, MARKER, SOCKET, type Engine } from '../helpers/docker.js';
import { tempDir } from '../helpers/gateway.js';

const run = promisify(execFile);
const root = packageRoot();
const cli = join(root, 'bin', 'openshell.js');
const BASE = `openshell-test/node:v${IMAGE_VERSION}`;
const IMAGE = 'openshell-test/openshell:test';

// A first build on a clean engine (no layer cache) takes about 3 minutes on two cores.
t.setTimeout(900_000);
const engine = await dockerEngine();
const compose = await run('docker-compose', ['version']).then(() => true, () => false);
if ('skip' in engine) {
  t.comment(`Dockerfile and compose tests skipped: ${engine.skip}`);
  t.plan(0, engine.skip);
} else if (!compose) {
  t.plan(0, 'docker-compose not installed (scripts/docker-test-setup.sh installs it)');
} else {
  await tests(engine);
}

/** `docker build` with a context streamed as a tar (what `files` names, relative to `cwd`). */
async function build(tag: string, cwd: string, files: string[], args: string[] = []): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const tar = spawn('tar', ['-C', cwd, '-cf', '-', ...files], { stdio: ['ignore', 'pipe', 'inherit'] });
    const docker = spawn('docker', ['build', '-q', '-t', tag, ...args, '-'], {
      env: { ...process.env, DOCKER_HOST, DOCKER_BUILDKIT: '0' },
      stdio: [tar.stdout, 'pipe', 'pipe'],
    });
    let output = '';
    docker.stdout.on('data', (d: Buffer) => (output += d));
    docker.stderr.on('data', (d: Buffer) => (output += d));
    docker.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`docker build ${tag} exited ${code}: ${output.slice(-4000)}`))));
  });
}

/**
 * GET /healthz, bounded. Not fetch: while the gateway starts, docker-proxy
 * accepts on the published port and holds the connection, and a pending
 * fetch there keeps no handle alive (the test process simply ended).
 */
function healthz(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = get(url, { timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.once('timeout', () => req.destroy());
    req.once('error', () => resolve(false));
  });
}

async function tests(engine: Engine): Promise<void> {
  t.test('the Dockerfile builds with the local engine from a locally imported base', async (t) => {
    // The base: the test Debian image (it has the confinement's tools) with this machine's node and npm.
    const ctx = tempDir(t);
    mkdirSync(join(ctx, 'usr/local/bin'), { recursive: true });
    copyFileSync(realpathSync(process.execPath), join(ctx, 'usr/local/bin/node'));
    cpSync('/usr/lib/node_modules/npm', join(ctx, 'usr/local/lib/node_modules/npm'), { recursive: true });
    writeFileSync(
      join(ctx, 'Dockerfile'),
      [
        `FROM ${IMAGES.debian}`,
        'COPY usr /usr',
        'RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm && node --version && npm --version',
        '',
      ].join('\n'),
    );
    await build(BASE, ctx, ['Dockerfile', 'usr']);
    // The project: its tracked files and node_modules (no registry here to npm ci from), no .dockerignore.
    const { stdout } = await run('git', ['ls-files', '-co', '--exclude-standard'], { cwd: root, maxBuffer: 16 * 1024 * 1024 });
    const files = stdout.split('\n').filter((f) => f && f !== '.dockerignore');
    const listFile = join(tempDir(t), 'files');
    writeFileSync(listFile, [...files, 'node_modules'].join('\n'));
    await build(IMAGE, root, ['-T', listFile], ['--build-arg', `BASE_IMAGE=${BASE}`]);
    const version = await engine.docker('run', '--rm', '--network', 'none', IMAGE, '--version');
    t.match(version, /\d+\.\d+\.\d+/, `openshell --version in the image: ${version.trim()}`);
    const bundle = await engine.docker('run', '--rm', '--network', 'none', '--entrypoint', 'cat', IMAGE, '/app/dist/bundle/bundle.json');
    t.match(JSON.parse(bundle), { entry: 'supervisor/main.mjs', tools: { bwrap: 'tools/bwrap', nft: 'tools/nft' } }, 'the image carries the bundle');
  });

  t.test('docker-compose config accepts docker-compose.yml; up serves /healthz and creates a sandbox through the CLI', async (t) => {
    const port = await freePort();
    const project = `openshell-test-${process.pid}`;
    const env = {
      ...process.env,
      DOCKER_HOST,
      OPENSHELL_IMAGE: IMAGE,
      DOCKER_SOCKET: SOCKET,
      OPENSHELL_PUBLISH: `127.0.0.1:${port}`,
      OPENSHELL_DOCKER_NETWORK: 'host',
      OPENSHELL_DEFAULT_IMAGE: IMAGES.busybox,
    };
    const composeRun = (...args: string[]) =>
      run('docker-compose', ['-p', project, '-f', join(root, 'docker-compose.yml'), ...args], { env, cwd: root, timeout: 120_000 });
    const config = await composeRun('config');
    t.match(config.stdout, /OPENSHELL_DOCKER_NETWORK: host/, 'config renders the file');
    t.match(config.stdout, /openshell-state/);

    t.teardown(async () => {
      await composeRun('down', '-v', '--timeout', '5').catch(() => undefined);
    });
    await composeRun('up', '-d', '--no-build');
    const gateway = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 60_000;
    let healthy = false;
    while (!healthy && Date.now() < deadline) {
      healthy = await healthz(`${gateway}/healthz`);
      if (!healthy) await new Promise((r) => setTimeout(r, 200));
    }
    if (!healthy) t.comment((await composeRun('logs', '--no-color').catch((e: Error) => ({ stdout: e.message }))).stdout);
    t.ok(healthy, '/healthz answers on the published port');

    const cliEnv = { ...process.env, OPENSHELL_GATEWAY: gateway };
    t.teardown(async () => {
      await run(process.execPath, [cli, 'sandbox', 'delete', 'composed'], { env: cliEnv }).catch(() => undefined);
    });
    const created = await run(process.execPath, [cli, 'sandbox', 'create', '--name', 'composed'], { env: cliEnv, timeout: 60_000 });
    t.match(created.stdout + created.stderr, /composed/);
    const marker = await run(process.execPath, [cli, 'sandbox', 'exec', 'composed', '--', 'cat', MARKER], { env: cliEnv, timeout: 30_000 });
    t.equal(marker.stdout, 'openshell-test image busybox\n', 'the sandbox runs in its own container, from the composed gateway');
    const containers = await engine.docker('ps', '--filter', 'label=openshell.sandbox.name=composed', '--format', '{{.Names}}');
    t.match(containers, /openshell-[0-9a-f]{8}-composed/);
    await run(process.execPath, [cli, 'sandbox', 'delete', 'composed'], { env: cliEnv, timeout: 30_000 });
  });
}

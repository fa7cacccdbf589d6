/**
 * The docker driver against the engine's own CLI, in one run:
 *
 *   node dist/bench/docker.js [--quick] [--image openshell-test/busybox:v3]
 *
 * - create → Ready (POST until the watch says Ready) against `docker run --rm IMAGE true`
 * - exec round trip p50 (`true`, JSON mode) against `docker exec CONTAINER true`
 * - memory per idle sandbox: the gateway's VmRSS delta and the container's processes' VmRSS
 *
 * It uses the tests' own dockerd (test/helpers/docker.ts; started if need be,
 * stopped again if it started it) unless DOCKER_HOST names another engine,
 * and sandboxes on the host network. Prints one table, writes
 * bench/results/docker-<time>.json.
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { packageRoot } from '../src/paths.js';
import { dockerEngine, IMAGES, releaseEngine } from '../test/helpers/docker.js';
import { createSandbox, deleteAllSandboxes, execJson, killEverythingSync, pct, progress, request, round, rssKiB, startGateway, stopChild, waitReady } from './lib.js';

const run = promisify(execFile);

export interface DockerBenchResult {
  image: string;
  engine: string;
  createReadyMs: { p50: number; p90: number };
  dockerRunTrueMs: { p50: number; p90: number };
  createRatio: number;
  execMs: { p50: number; p99: number };
  dockerExecMs: { p50: number; p99: number };
  execRatio: number;
  idle: { sandboxes: number; gatewayKiBPerSandbox: number; containerKiB: { p50: number; max: number } };
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

function stats(values: number[]): { p50: number; p90: number; p99: number } {
  return { p50: Number(round(pct(values, 50))), p90: Number(round(pct(values, 90))), p99: Number(round(pct(values, 99))) };
}

/** VmRSS of every process of a container (host pids from `docker top`). */
async function containerRssKiB(docker: (...a: string[]) => Promise<string>, id: string): Promise<number> {
  const out = await docker('top', id, '-eo', 'pid');
  let total = 0;
  for (const line of out.split('\n').slice(1)) {
    const pid = Number(line.trim());
    if (!pid) continue;
    try {
      total += rssKiB(pid);
    } catch {
      // exited meanwhile
    }
  }
  return total;
}

export async function runDockerBench(opts: { quick?: boolean; image?: string } = {}): Promise<DockerBenchResult | { skipped: string }> {
  const quick = opts.quick ?? false;
  const N = { create: quick ? 5 : 15, exec: quick ? 50 : 200, dockerExec: quick ? 10 : 30, idle: quick ? 5 : 10 };
  const external = process.env.DOCKER_HOST;
  let host: string;
  let docker: (...a: string[]) => Promise<string>;
  let release = async () => undefined as void;
  if (external) {
    host = external;
    docker = async (...a: string[]) => (await run('docker', a, { env: process.env, maxBuffer: 16 << 20 })).stdout;
  } else {
    const engine = await dockerEngine(process.pid);
    if ('skip' in engine) return { skipped: engine.skip };
    host = engine.host;
    docker = engine.docker;
    release = () => releaseEngine(process.pid);
  }
  const image = opts.image ?? IMAGES.busybox;
  const stateDir = await mkdtemp(path.join(os.tmpdir(), 'openshell-bench-docker-'));
  await mkdir(stateDir, { recursive: true });
  const gw = await startGateway(stateDir, ['--port', '0', '--driver', 'docker', '--docker-host', host, '--docker-network', 'host', '--default-image', image]);
  try {
    // Warm-up: the engine's first container and the bundle's first read from disk.
    await docker('run', '--rm', '--network', 'host', image, 'true');
    await createSandbox(gw.url, 'warm');
    await waitReady(gw.url, 'warm');

    progress(`docker bench: create → Ready x${N.create} (${image})`);
    const create: number[] = [];
    for (let i = 0; i < N.create; i++) {
      const t0 = Date.now();
      await createSandbox(gw.url, `c${i}`);
      const at = await waitReady(gw.url, `c${i}`, 60_000);
      create.push(at - t0);
      await request('DELETE', `${gw.url}/v1/sandboxes/c${i}`);
      // The next create must not share the engine with this one's removal.
      while ((await request('GET', `${gw.url}/v1/sandboxes/c${i}`)).status !== 404) await new Promise((r) => setTimeout(r, 50));
    }
    const dockerRun: number[] = [];
    for (let i = 0; i < N.create; i++) dockerRun.push(await timed(() => docker('run', '--rm', '--network', 'host', image, 'true')));

    progress(`docker bench: exec x${N.exec} vs docker exec x${N.dockerExec}`);
    const container = (await docker('ps', '-q', '--filter', 'label=openshell.sandbox.name=warm')).trim();
    for (let i = 0; i < 20; i++) await execJson(gw.url, 'warm', ['true']);
    const exec: number[] = [];
    for (let i = 0; i < N.exec; i++) {
      exec.push(
        await timed(async () => {
          const res = await execJson(gw.url, 'warm', ['true']);
          if (res.body?.exitCode !== 0) throw new Error(`exec true: ${JSON.stringify(res.body)}`);
        }),
      );
    }
    const dockerExec: number[] = [];
    for (let i = 0; i < N.dockerExec; i++) dockerExec.push(await timed(() => docker('exec', container, 'true')));

    progress(`docker bench: ${N.idle} idle sandboxes`);
    await new Promise((r) => setTimeout(r, 1000));
    const before = rssKiB(gw.pid);
    for (let i = 0; i < N.idle; i++) await createSandbox(gw.url, `idle${i}`);
    for (let i = 0; i < N.idle; i++) await waitReady(gw.url, `idle${i}`, 60_000);
    // Let start-up garbage settle before reading.
    await new Promise((r) => setTimeout(r, 3000));
    const after = rssKiB(gw.pid);
    const perContainer: number[] = [];
    for (let i = 0; i < N.idle; i++) {
      const id = (await docker('ps', '-q', '--filter', `label=openshell.sandbox.name=idle${i}`)).trim();
      perContainer.push(await containerRssKiB(docker, id));
    }

    const c = stats(create);
    const r = stats(dockerRun);
    const e = stats(exec);
    const d = stats(dockerExec);
    const version = (await docker('version', '--format', '{{.Server.Version}}')).trim();
    return {
      image,
      engine: `docker ${version}`,
      createReadyMs: { p50: c.p50, p90: c.p90 },
      dockerRunTrueMs: { p50: r.p50, p90: r.p90 },
      createRatio: Number(round(c.p50 / r.p50)),
      execMs: { p50: e.p50, p99: e.p99 },
      dockerExecMs: { p50: d.p50, p99: d.p99 },
      execRatio: Number(round(e.p50 / d.p50, 3)),
      idle: {
        sandboxes: N.idle,
        gatewayKiBPerSandbox: Math.round((after - before) / N.idle),
        containerKiB: { p50: Math.round(pct(perContainer, 50)), max: Math.max(...perContainer) },
      },
    };
  } finally {
    await deleteAllSandboxes(gw.url).catch(() => 0);
    await stopChild(gw.child);
    await rm(stateDir, { recursive: true, force: true });
    await release();
  }
}

export function printDockerTable(r: DockerBenchResult): void {
  const rows = [
    ['create → Ready p50 / p90 (ms)', `${r.createReadyMs.p50} / ${r.createReadyMs.p90}`, `docker run --rm IMAGE true: ${r.dockerRunTrueMs.p50} / ${r.dockerRunTrueMs.p90}`, `${r.createRatio}x`],
    ['exec round trip p50 / p99 (ms)', `${r.execMs.p50} / ${r.execMs.p99}`, `docker exec C true: ${r.dockerExecMs.p50} / ${r.dockerExecMs.p99}`, `${r.execRatio}x`],
    ['gateway RSS per idle sandbox (KiB)', String(r.idle.gatewayKiBPerSandbox), '', ''],
    ['container RSS per idle sandbox p50 / max (KiB)', `${r.idle.containerKiB.p50} / ${r.idle.containerKiB.max}`, '', ''],
  ];
  process.stdout.write(`\n## docker driver (${r.image}, ${r.engine})\n\n| metric | ours | peer | ratio |\n|---|---|---|---|\n`);
  for (const row of rows) process.stdout.write(`| ${row.join(' | ')} |\n`);
}

const isMain = process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname);
if (isMain) {
  process.on('exit', killEverythingSync);
  const argv = process.argv.slice(2);
  const imageArg = argv.indexOf('--image');
  runDockerBench({ quick: argv.includes('--quick'), image: imageArg >= 0 ? argv[imageArg + 1] : undefined }).then(
    async (r) => {
      if ('skipped' in r) {
        process.stdout.write(`docker bench skipped: ${r.skipped}\n`);
        return;
      }
      printDockerTable(r);
      const dir = path.join(packageRoot(), 'bench', 'results');
      await mkdir(dir, { recursive: true });
      await writeFile(path.join(dir, `docker-${new Date().toISOString().replace(/[:.]/g, '-')}.json`), JSON.stringify(r, null, 2));
    },
    (err: unknown) => {
      process.stderr.write(`docker bench failed: ${(err as Error).stack}\n`);
      process.exitCode = 1;
    },
  );
}


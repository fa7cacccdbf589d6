/**
 * CPU cost of an exec, by process: where the time goes when the machine is
 * shared and wall-clock rates swing with load.
 *
 *   node dist/bench/exec-cpu.js [--execs 1000] [--conc 16] [--mb 256] [--runs 1] [--cpu-prof DIR]
 *
 * Starts a gateway (process driver), creates two sandboxes, runs `--execs`
 * `true` execs at `--conc` and one bulk `head -c` exec, and reads CPU time
 * (user + system, plus reaped children) of the gateway and the supervisors
 * from /proc, and of this process (the client). Prints ms of CPU per exec
 * and per 100 MB of bulk output: the budget for 300 execs/s on 2 cores is
 * 6.7 ms in total, for 400 MB/s 500 ms per 100 MB.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { mkdirSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import {
  cpuOf,
  createSandbox,
  deleteAllSandboxes,
  execJson,
  execStream,
  killEverythingSync,
  mapLimit,
  request,
  rssKiB,
  settle,
  startGateway,
  stopChild,
  supervisorPids,
  waitReady,
} from './lib.js';

const argv = process.argv.slice(2);
const arg = (name: string, dflt: number): number => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] ? Number(argv[i + 1]) : dflt;
};
const EXECS = arg('execs', 1000);
const CONC = arg('conc', 16);
const MB = arg('mb', 256);
const RUNS = arg('runs', 1);
/** `--idle N`: this many more sandboxes stay connected and idle during the measurements. */
const IDLE = arg('idle', 0);
/** `--cpu-prof DIR`: the gateway and the supervisors write V8 CPU profiles there (summarise with prof-summary.js). */
const profIdx = argv.indexOf('--cpu-prof');
const profDir = profIdx >= 0 ? resolve(argv[profIdx + 1] ?? 'bench/results/prof-exec-cpu') : '';

interface Snap {
  gw: { self: number; sys: number; children: number };
  sup: { self: number; sys: number; children: number };
  client: number;
  wall: number;
}

function snap(gwPid: number, sups: number[]): Snap {
  const sup = { self: 0, sys: 0, children: 0 };
  for (const p of sups) {
    const c = cpuOf(p);
    sup.self += c.self;
    sup.sys += c.sys;
    sup.children += c.children;
  }
  const u = process.cpuUsage();
  return { gw: cpuOf(gwPid), sup, client: (u.user + u.system) / 1000, wall: performance.now() };
}

function report(label: string, a: Snap, b: Snap, per: number, unit: string): void {
  const f = (n: number) => (n / per).toFixed(2).padStart(7);
  const gw = b.gw.self - a.gw.self;
  const sup = b.sup.self - a.sup.self;
  const kids = b.sup.children - a.sup.children;
  const client = b.client - a.client;
  const total = gw + sup + kids + client;
  console.log(
    `${label.padEnd(10)} ms CPU per ${unit}: gateway ${f(gw)}  supervisor ${f(sup)}  commands ${f(kids)}  client ${f(client)}  total ${f(total)}   (wall ${((b.wall - a.wall) / 1000).toFixed(2)} s; kernel: gateway ${f(b.gw.sys - a.gw.sys)}, supervisor ${f(b.sup.sys - a.sup.sys)})`,
  );
}

async function main(): Promise<void> {
  const stateDir = await mkdtemp(join(tmpdir(), 'openshell-exec-cpu-'));
  if (profDir) mkdirSync(profDir, { recursive: true });
  const gw = await startGateway(
    stateDir,
    ['--warm-supervisors', profDir ? '0' : '2'],
    profDir ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`, '--cpu-prof-name=gateway.cpuprofile'] : [],
  );
  const preload = pathToFileURL(join(fileURLToPath(new URL('.', import.meta.url)), 'prof-preload.js')).href;
  process.once('exit', killEverythingSync);
  try {
    const boxes = ['cpu-a', 'cpu-b'];
    for (const b of boxes) {
      await createSandbox(gw.url, b, profDir ? { NODE_OPTIONS: `--import=${preload}`, OPENSHELL_BENCH_PROF: join(profDir, `supervisor-${b}.cpuprofile`) } : undefined);
    }
    for (const b of boxes) await waitReady(gw.url, b);
    await mapLimit(Array.from({ length: IDLE }, (_, i) => `idle-${i}`), 10, async (n) => {
      await createSandbox(gw.url, n);
      await waitReady(gw.url, n, 60_000);
    });
    if (IDLE > 0) await settle();
    await mapLimit(Array.from({ length: 50 }, (_, i) => i), 8, (i) => execJson(gw.url, boxes[i % 2]!, ['true']));
    const ids = await Promise.all(boxes.map(async (b) => String((await request('GET', `${gw.url}/v1/sandboxes/${b}`)).body?.id)));
    const sups = supervisorPids(ids);
    const a = snap(gw.pid, sups);
    let errors = 0;
    await mapLimit(Array.from({ length: EXECS }, (_, i) => i), CONC, async (i) => {
      const r = await execJson(gw.url, boxes[i % 2]!, ['true']);
      if (r.status !== 200) errors++;
    });
    const b = snap(gw.pid, sups);
    report(`exec c=${CONC}`, a, b, EXECS, 'exec');
    console.log(`           ${(EXECS / ((b.wall - a.wall) / 1000)).toFixed(0)} execs/s, ${errors} errors; RSS gateway ${rssKiB(gw.pid)} KiB, supervisors ${sups.map((p) => rssKiB(p)).join(', ')} KiB`);
    for (let run = 0; MB > 0 && run < RUNS; run++) {
      const c = snap(gw.pid, sups);
      const r = await execStream(gw.url, boxes[0]!, ['head', '-c', String(MB * 1024 * 1024), '/dev/zero']).done;
      const d = snap(gw.pid, sups);
      report('bulk', c, d, (MB * 1.048576) / 100, '100 MB');
      console.log(`           ${((r.stdoutBytes / 1e6) / ((d.wall - c.wall) / 1000)).toFixed(0)} MB/s, ${r.lines} lines`);
    }
    await deleteAllSandboxes(gw.url);
  } finally {
    await stopChild(gw.child);
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);

/**
 * `npm run bench`: one run measuring the gateway (process driver) end to end,
 * with OpenSSH as the peer where one makes sense, and the egress bench.
 *
 *   node dist/bench/run.js [--quick] [--only create,rss,exec,bulk,ssh,isolation,clibulk,quiet,deadrelay,egress]
 *
 * Progress goes to stderr, one table per section to stdout, and everything to
 * bench/results/bench-<timestamp>.json and bench/results/latest.json.
 * Every child process (gateways, sshd, proxies) is killed on exit, even on
 * failure; sandboxes are deleted through the API before a gateway stops.
 */
import os from 'node:os';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, openSync, closeSync, rmSync } from 'node:fs';
import { mkdtemp, mkdir, rm, writeFile, chmod } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import { packageRoot } from '../src/paths.js';
import { runEgressBench } from './egress.js';
import { runIsolationBench } from './isolation.js';
import { startTcpProxy, type TcpProxy } from './tcp-proxy.js';
import {
  createSandbox,
  deleteAllSandboxes,
  cpuOf,
  execJson,
  execStream,
  freePort,
  killEverythingSync,
  mapLimit,
  pct,
  progress,
  request,
  round,
  rssKiB,
  settle,
  startGateway,
  stopChild,
  supervisorPids,
  track,
  waitReady,
  withTimeout,
  type ExecStream,
  type GatewayChild,
} from './lib.js';

// ---------------------------------------------------------------- args

const argv = process.argv.slice(2);
const quick = argv.includes('--quick');
const ALL = ['create', 'rss', 'exec', 'bulk', 'ssh', 'isolation', 'clibulk', 'quiet', 'deadrelay', 'egress'] as const;
type SectionName = (typeof ALL)[number];
let only: SectionName[] = [...ALL];
const onlyIdx = argv.findIndex((a) => a === '--only' || a.startsWith('--only='));
if (onlyIdx >= 0) {
  const raw = argv[onlyIdx].includes('=') ? argv[onlyIdx].split('=')[1] : argv[onlyIdx + 1];
  const wanted = (raw ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  const bad = wanted.filter((w) => !(ALL as readonly string[]).includes(w));
  if (bad.length || wanted.length === 0) {
    process.stderr.write(`--only: unknown section(s) ${bad.join(',') || '(none)'}; choose from ${ALL.join(',')}\n`);
    process.exit(2);
  }
  only = ALL.filter((s) => wanted.includes(s));
}

/** `--cpu-prof`: the main gateway and the pool supervisors write V8 CPU profiles to bench/results/prof-<time>/. */
const cpuProf = argv.includes('--cpu-prof');
const profDir = cpuProf ? path.join(packageRoot(), 'bench', 'results', `prof-${new Date().toISOString().replace(/[:.]/g, '-')}`) : '';

const N = {
  createRuns: quick ? 5 : 20,
  idleSandboxes: quick ? 20 : 100,
  execWarmup: quick ? 10 : 30,
  execSeq: quick ? 50 : 200,
  execConcTotal: quick ? 200 : 2000,
  bulkBytes: quick ? 64 * 1024 * 1024 : 536_870_912,
  sshNew: quick ? 5 : 20,
  sshMux: quick ? 30 : 200,
  sshConcTotal: quick ? 64 : 160,
  quietExecs: quick ? 100 : 1000,
  quietSandboxes: 10,
  deadRelayExecs: 10,
};

// ---------------------------------------------------------------- results

type Cell = number | string;
interface Row {
  metric: string;
  ours: Cell;
  peer: Cell;
  target: string;
  ok: string;
}
interface SectionResult {
  title: string;
  rows: Array<Row | Record<string, Cell>>;
  notes: string[];
  error?: string;
  durationMs: number;
  /** 1-minute load average at start and end: other work on the machine skews everything. */
  load?: [number, number];
}
const results: Partial<Record<SectionName, SectionResult>> = {};
/** Raw numbers other sections (the summary) use. */
const raw: Record<string, number> = {};

function okCell(value: number, target: number, better: 'lower' | 'higher'): string {
  if (!Number.isFinite(value)) return 'n/a';
  return (better === 'lower' ? value <= target : value >= target) ? 'yes' : 'NO';
}

function row(metric: string, ours: number, opts: { peer?: number; target?: number; better?: 'lower' | 'higher'; unit?: string; digits?: number } = {}): Row {
  const d = opts.digits ?? 2;
  return {
    metric,
    ours: round(ours, d),
    peer: opts.peer === undefined ? '' : round(opts.peer, d),
    target: opts.target === undefined ? '' : `${opts.better === 'higher' ? '≥' : '≤'} ${opts.target}${opts.unit ? ' ' + opts.unit : ''}`,
    ok: opts.target === undefined ? '' : okCell(ours, opts.target, opts.better ?? 'lower'),
  };
}

// ---------------------------------------------------------------- shared gateway and sandbox pool

let tmpRoot = '';
let main: GatewayChild | null = null;
const pool: string[] = [];

async function mainGateway(): Promise<GatewayChild> {
  if (main && main.child.exitCode === null) return main;
  const dir = path.join(tmpRoot, 'gw-main');
  await mkdir(dir, { recursive: true });
  if (cpuProf) await mkdir(profDir, { recursive: true });
  main = await startGateway(dir, ['--port', '0'], cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`, '--cpu-prof-name=gateway.cpuprofile'] : []);
  progress(`main gateway pid ${main.pid} at ${main.url}`);
  return main;
}

/** Makes sure at least n Ready pool sandboxes exist; returns their names. */
async function ensurePool(n: number): Promise<string[]> {
  const gw = await mainGateway();
  const missing: string[] = [];
  for (let i = pool.length; i < n; i++) missing.push(`pool-${i}`);
  if (missing.length) {
    progress(`creating ${missing.length} pool sandboxes (have ${pool.length})`);
    await mapLimit(missing, 10, async (name) => {
      await createSandbox(gw.url, name, cpuProf ? { NODE_OPTIONS: `--import=${pathToFileURL(path.join(packageRoot(), 'dist', 'bench', 'prof-preload.js')).href}`, OPENSHELL_BENCH_PROF: path.join(profDir, `supervisor-${name}.cpuprofile`) } : undefined);
      await waitReady(gw.url, name, 60_000);
    });
    pool.push(...missing);
  }
  return pool.slice(0, n);
}

async function deleteNames(base: string, names: string[]): Promise<void> {
  await mapLimit(names, 16, async (n) => {
    await request('DELETE', `${base}/v1/sandboxes/${n}`).catch(() => undefined);
  });
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const list = await request('GET', `${base}/v1/sandboxes`);
    const left = (list.body?.sandboxes ?? []).filter((s: { name: string }) => names.includes(s.name));
    if (left.length === 0) return;
    await delay(100);
  }
}

// ---------------------------------------------------------------- 1. create → Ready

async function benchCreate(): Promise<SectionResult> {
  const gw = await mainGateway();
  const names: string[] = [];
  const lat: number[] = [];
  try {
    // One untimed warm-up (first supervisor start pays for cold caches).
    names.push('lat-warm');
    let t = Date.now();
    await createSandbox(gw.url, 'lat-warm');
    await waitReady(gw.url, 'lat-warm');
    for (let i = 0; i < N.createRuns; i++) {
      const name = `lat-${i}`;
      names.push(name);
      t = performance.now();
      await createSandbox(gw.url, name);
      await waitReady(gw.url, name);
      lat.push(performance.now() - t);
    }
    progress(`create→Ready: ${lat.map((x) => x.toFixed(0)).join(' ')} ms`);
  } finally {
    await deleteNames(gw.url, names);
  }
  raw.createP50 = pct(lat, 50);
  raw.createP95 = pct(lat, 95);
  return {
    title: `create → Ready latency (process driver, ${lat.length} sandboxes, sequential, POST → Ready seen on /watch)`,
    rows: [
      row('create→Ready p50 ms', raw.createP50, { target: 150, better: 'lower', unit: 'ms', digits: 1 }),
      row('create→Ready p95 ms', raw.createP95, { digits: 1 }),
      row('create→Ready max ms', Math.max(...lat), { digits: 1 }),
    ],
    notes: [],
    durationMs: 0,
  };
}

// ---------------------------------------------------------------- 2. RSS with idle sandboxes

/** The lowest VmRSS over an idle window: V8 collects and returns memory a few seconds after allocation stops. */
async function settledRssKiB(pid: number, windowMs = 10_000): Promise<number> {
  let lowest = rssKiB(pid);
  for (let waited = 0; waited < windowMs; waited += 500) {
    await delay(500);
    lowest = Math.min(lowest, rssKiB(pid));
  }
  return lowest;
}

async function benchRss(): Promise<SectionResult> {
  const gw = await mainGateway();
  // A few execs first so the exec path's modules are loaded before the baseline.
  if (pool.length === 0) await ensurePool(1);
  for (let i = 0; i < 5; i++) await execJson(gw.url, pool[0], ['true']);
  const have = pool.length;
  const before = await settledRssKiB(gw.pid);
  const t = Date.now();
  await ensurePool(N.idleSandboxes);
  const createMs = Date.now() - t;
  const after = await settledRssKiB(gw.pid);
  const added = N.idleSandboxes - have;
  const per = (after - before) / added;
  raw.rssPerSandbox = per;
  // The idle fleet is this section's subject only: later sections time one
  // gateway and a few sandboxes, not 100 idle supervisors sharing the two cores.
  const keep = Math.max(have, N.quietSandboxes);
  if (pool.length > keep) {
    progress(`deleting ${pool.length - keep} idle sandboxes`);
    await deleteNames(gw.url, pool.splice(keep));
  }
  return {
    title: `gateway RSS with ${N.idleSandboxes} idle connected sandboxes (VmRSS of the gateway process)`,
    rows: [
      row('RSS before, MiB', before / 1024),
      row(`RSS with ${N.idleSandboxes} sandboxes, MiB`, after / 1024),
      row('KiB per idle sandbox', per, { target: 100, better: 'lower', unit: 'KiB', digits: 1 }),
      row(`create ${added} (10 at a time) → all Ready, s`, createMs / 1000),
    ],
    notes: [
      `delta over ${added} sandboxes added on top of ${have}; each RSS is the lowest of 20 samples over 10 s of idle, so the GC has settled; the sandboxes beyond ${Math.max(have, N.quietSandboxes)} are deleted afterwards`,
    ],
    durationMs: 0,
  };
}

// ---------------------------------------------------------------- 3. exec round trip

async function runConcurrent(total: number, conc: number, one: (worker: number) => Promise<void>): Promise<{ lat: number[]; rate: number; errors: number; firstError: string }> {
  const lat: number[] = [];
  let errors = 0;
  let firstError = '';
  let next = 0;
  const t = performance.now();
  await Promise.all(
    Array.from({ length: conc }, async (_, w) => {
      while (next < total) {
        next++;
        const s = performance.now();
        try {
          await one(w);
          lat.push(performance.now() - s);
        } catch (err) {
          errors++;
          firstError ||= (err as Error).message;
        }
      }
    }),
  );
  const secs = (performance.now() - t) / 1000;
  return { lat, rate: lat.length / secs, errors, firstError };
}

async function benchExec(): Promise<SectionResult> {
  const gw = await mainGateway();
  const boxes = await ensurePool(8);
  const one = async (name: string) => {
    const res = await execJson(gw.url, name, ['true']);
    if (res.status !== 200 || res.body?.exitCode !== 0) throw new Error(`exec: HTTP ${res.status} ${JSON.stringify(res.body).slice(0, 200)}`);
  };
  for (let i = 0; i < N.execWarmup; i++) await one(boxes[i % boxes.length]);
  const seq: number[] = [];
  for (let i = 0; i < N.execSeq; i++) {
    const s = performance.now();
    await one(boxes[0]);
    seq.push(performance.now() - s);
  }
  raw.execP50 = pct(seq, 50);
  raw.execP99 = pct(seq, 99);
  const rows: Row[] = [
    row('sequential p50 ms', raw.execP50, { target: 12, better: 'lower', unit: 'ms' }),
    row('sequential p99 ms', raw.execP99),
  ];
  const notes: string[] = [];
  for (const conc of [16, 64]) {
    const r = await runConcurrent(N.execConcTotal, conc, (w) => one(boxes[w % boxes.length]));
    progress(`exec c=${conc}: ${r.rate.toFixed(0)}/s, p50 ${pct(r.lat, 50).toFixed(1)} ms, errors ${r.errors}`);
    raw[`execRate${conc}`] = r.rate;
    raw[`execC${conc}P50`] = pct(r.lat, 50);
    raw[`execC${conc}P99`] = pct(r.lat, 99);
    rows.push(
      row(`c=${conc} execs/s`, r.rate, conc === 16 ? { target: 300, better: 'higher', unit: '/s', digits: 0 } : { digits: 0 }),
      row(`c=${conc} p50 ms`, pct(r.lat, 50)),
      row(`c=${conc} p99 ms`, pct(r.lat, 99)),
    );
    if (r.errors) notes.push(`c=${conc}: ${r.errors} errors, first: ${r.firstError}`);
  }
  return {
    title: `exec round trip: \`true\`, Accept: application/json (${N.execSeq} sequential after ${N.execWarmup} warm-up; ${N.execConcTotal} at each concurrency, spread over ${boxes.length} sandboxes)`,
    rows,
    notes,
    durationMs: 0,
  };
}

// ---------------------------------------------------------------- 4. bulk stdout

async function benchBulk(): Promise<SectionResult> {
  const gw = await mainGateway();
  const [box] = await ensurePool(1);
  // warm-up: long enough for the JIT to optimise the output path in the gateway and the supervisor
  const warm = 64 * 1024 * 1024;
  const w = await execStream(gw.url, box, `head -c ${warm} /dev/zero`).done;
  if (w.stdoutBytes !== warm) throw new Error(`warm-up got ${w.stdoutBytes} bytes (${w.error})`);
  const runs: number[] = [];
  // CPU per 100 MB by process moves less with outside load than MB/s does.
  const id = (await request('GET', `${gw.url}/v1/sandboxes/${box}`)).body?.id as string;
  const [sup] = supervisorPids([id]);
  const cpu = (): number[] => {
    const u = process.cpuUsage();
    const s = sup ? cpuOf(sup) : { self: NaN, children: NaN };
    return [cpuOf(gw.pid).self, s.self, s.children, (u.user + u.system) / 1000];
  };
  const cpuNotes: string[] = [];
  for (let i = 0; i < (quick ? 1 : 3); i++) {
    const c0 = cpu();
    const t = performance.now();
    const r = await execStream(gw.url, box, `head -c ${N.bulkBytes} /dev/zero`).done;
    const secs = (performance.now() - t) / 1000;
    if (r.stdoutBytes !== N.bulkBytes || r.exitCode !== 0) throw new Error(`bulk got ${r.stdoutBytes} bytes, exit ${r.exitCode}, error ${r.error}`);
    runs.push(r.stdoutBytes / 1e6 / secs);
    const per = cpu().map((v, k) => ((v - c0[k]!) / r.stdoutBytes) * 1e8);
    cpuNotes.push(`gateway ${per[0]!.toFixed(0)}, supervisor ${per[1]!.toFixed(0)}, head ${per[2]!.toFixed(0)}, client ${per[3]!.toFixed(0)}`);
    progress(`bulk: ${runs.at(-1)!.toFixed(0)} MB/s (${r.lines} lines, ${(r.stdoutBytes / r.lines / 1024).toFixed(1)} KiB/line; ms CPU per 100 MB: ${cpuNotes.at(-1)})`);
  }
  raw.bulk = Math.max(...runs);
  return {
    title: `bulk stdout: head -c ${N.bulkBytes} /dev/zero through the NDJSON exec stream (decoded bytes; best of ${runs.length})`,
    rows: [row('stdout MB/s (10^6 B/s)', raw.bulk, { target: 400, better: 'higher', unit: 'MB/s', digits: 0 })],
    notes: [`runs: ${runs.map((r) => r.toFixed(0)).join(', ')} MB/s`, `ms of CPU per 100 MB, by run: ${cpuNotes.join('; ')}`],
    durationMs: 0,
  };
}

// ---------------------------------------------------------------- 5. OpenSSH peer

function run(cmd: string, args: string[], opts: { stdoutFd?: number; timeoutMs?: number } = {}): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = track(spawn(cmd, args, { stdio: ['ignore', opts.stdoutFd ?? 'ignore', 'pipe'] }));
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
  });
}

interface SshPeer {
  ssh: (args: string[], stdoutFd?: number) => Promise<void>;
  base: string[];
  mux: (p: string) => string[];
  dir: string;
  daemon: import('node:child_process').ChildProcess;
}

/** A private sshd on loopback (its own keys and config) and an ssh runner for it; null when sshd cannot be had. */
async function startSshPeer(name = 'ssh'): Promise<SshPeer | null> {
  const sshd = '/usr/sbin/sshd';
  if (!existsSync(sshd)) {
    if (process.getuid?.() === 0) {
      progress('sshd missing: apt-get install -y openssh-server');
      spawnSync('apt-get', ['install', '-y', 'openssh-server'], { stdio: 'ignore', timeout: 180_000 });
    }
    if (!existsSync(sshd)) {
      return null;
    }
  }
  const dir = path.join(tmpRoot, name);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await mkdir('/run/sshd', { recursive: true }).catch(() => undefined);
  const hostKey = path.join(dir, 'host_ed25519');
  const userKey = path.join(dir, 'id_ed25519');
  for (const k of [hostKey, userKey]) {
    const r = spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', k], { stdio: 'ignore' });
    if (r.status !== 0) throw new Error(`ssh-keygen failed for ${path.basename(k)}`);
  }
  await writeFile(path.join(dir, 'authorized_keys'), await import('node:fs/promises').then((f) => f.readFile(`${userKey}.pub`)));
  await chmod(path.join(dir, 'authorized_keys'), 0o600);
  const port = await freePort();
  const root = process.getuid?.() === 0;
  const config = [
    `Port ${port}`,
    'ListenAddress 127.0.0.1',
    `HostKey ${hostKey}`,
    `PidFile ${path.join(dir, 'sshd.pid')}`,
    `AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`,
    'UsePAM no',
    `PermitRootLogin ${root ? 'yes' : 'no'}`,
    'StrictModes no',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    'PubkeyAuthentication yes',
    'MaxSessions 64',
    'MaxStartups 100:30:200',
    'LogLevel ERROR',
    '',
  ].join('\n');
  const cfg = path.join(dir, 'sshd_config');
  await writeFile(cfg, config);
  const daemon = track(spawn(sshd, ['-D', '-e', '-f', cfg], { stdio: ['ignore', 'ignore', 'pipe'] }));
  let daemonErr = '';
  daemon.stderr!.on('data', (d: Buffer) => (daemonErr += d.toString()));
  const user = os.userInfo().username;
  const base = ['-F', '/dev/null', '-i', userKey, '-p', String(port), '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR', '-o', 'BatchMode=yes', '-l', user];
  const mux = (p: string) => ['-o', 'ControlMaster=auto', '-o', `ControlPath=${p}`, '-o', 'ControlPersist=60'];
  const ssh = async (args: string[], stdoutFd?: number) => {
    const r = await run('ssh', [...base, ...args], { stdoutFd, timeoutMs: 60_000 });
    if (r.code !== 0) throw new Error(`ssh exited ${r.code}: ${r.stderr.trim().slice(0, 300)} ${daemonErr.slice(0, 300)}`);
  };
  try {
    // wait for sshd
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        await ssh(['127.0.0.1', 'true']);
        break;
      } catch (err) {
        if (Date.now() > deadline || daemon.exitCode !== null) throw err;
        await delay(100);
      }
    }
  } catch (err) {
    await stopChild(daemon, 2000);
    throw err;
  }
  return { ssh, base, mux, dir, daemon };
}

async function benchSsh(): Promise<SectionResult> {
  const peer = await startSshPeer();
  if (!peer) {
    return { title: 'peer: OpenSSH', rows: [{ metric: 'OpenSSH', ours: 'n/a', peer: 'n/a', target: '', ok: 'n/a' }], notes: ['sshd not installed and not root'], durationMs: 0 };
  }
  const { ssh, base, mux, dir, daemon } = peer;
  const cm = path.join(dir, 'cm');
  const cmGcm = path.join(dir, 'cm-gcm');
  try {
    const version = spawnSync('ssh', ['-V'], { encoding: 'utf8' }).stderr.trim();
    const fresh: number[] = [];
    for (let i = 0; i < N.sshNew; i++) {
      const s = performance.now();
      await ssh(['127.0.0.1', 'true']);
      fresh.push(performance.now() - s);
    }
    await ssh([...mux(cm), '127.0.0.1', 'true']); // establishes the master
    for (let i = 0; i < 5; i++) await ssh([...mux(cm), '127.0.0.1', 'true']);
    const muxed: number[] = [];
    for (let i = 0; i < N.sshMux; i++) {
      const s = performance.now();
      await ssh([...mux(cm), '127.0.0.1', 'true']);
      muxed.push(performance.now() - s);
    }
    const c16 = await runConcurrent(N.sshConcTotal, 16, () => ssh([...mux(cm), '127.0.0.1', 'true']));
    progress(`ssh: new ${pct(fresh, 50).toFixed(0)} ms, mux ${pct(muxed, 50).toFixed(1)} ms, mux c=16 ${c16.rate.toFixed(0)}/s`);
    // bulk over its own aes128-gcm master (kex excluded, like our warm gateway)
    const gcm = ['-c', 'aes128-gcm@openssh.com', ...mux(cmGcm)];
    await ssh([...gcm, '127.0.0.1', 'true']);
    const devnull = openSync('/dev/null', 'w');
    const bulk: number[] = [];
    try {
      for (let i = 0; i < (quick ? 1 : 2); i++) {
        const s = performance.now();
        await ssh([...gcm, '127.0.0.1', `head -c ${N.bulkBytes} /dev/zero`], devnull);
        bulk.push(N.bulkBytes / 1e6 / ((performance.now() - s) / 1000));
      }
    } finally {
      closeSync(devnull);
    }
    raw.sshNewP50 = pct(fresh, 50);
    raw.sshMuxP50 = pct(muxed, 50);
    raw.sshMuxP99 = pct(muxed, 99);
    raw.sshMuxRate16 = c16.rate;
    raw.sshMuxC16P50 = pct(c16.lat, 50);
    raw.sshMuxC16P99 = pct(c16.lat, 99);
    raw.sshBulk = Math.max(...bulk);
    return {
      title: `peer: ${version} on loopback (ssh client process per exec; ${N.sshNew} new-connection, ${N.sshMux} ControlMaster runs)`,
      rows: [
        row('exec `true`, new connection, p50 ms', raw.sshNewP50, { digits: 1 }),
        row('exec `true`, new connection, p99 ms', pct(fresh, 99), { digits: 1 }),
        row('exec `true`, ControlMaster, p50 ms', raw.sshMuxP50),
        row('exec `true`, ControlMaster, p99 ms', raw.sshMuxP99),
        row('exec `true`, ControlMaster c=16, execs/s', c16.rate, { digits: 0 }),
        row('exec `true`, ControlMaster c=16, p50 ms', raw.sshMuxC16P50),
        row('exec `true`, ControlMaster c=16, p99 ms', raw.sshMuxC16P99),
        row(`bulk head -c ${N.bulkBytes} (aes128-gcm) MB/s`, raw.sshBulk, { digits: 0 }),
      ],
      notes: [`bulk runs: ${bulk.map((b) => b.toFixed(0)).join(', ')} MB/s over a warm ControlMaster (kex excluded)`, ...(c16.errors ? [`c=16: ${c16.errors} errors: ${c16.firstError}`] : [])],
      durationMs: 0,
    };
  } finally {
    for (const p of [cm, cmGcm]) {
      if (existsSync(p)) spawnSync('ssh', [...base, '-o', `ControlPath=${p}`, '-O', 'exit', '127.0.0.1'], { stdio: 'ignore', timeout: 5000 });
    }
    await stopChild(daemon, 2000);
  }
}

// ---------------------------------------------------------------- 5b. CLI bulk vs OpenSSH, same run

/**
 * Issue 21's user-level comparison: `openshell sandbox exec BOX -- head -c N
 * /dev/zero > /dev/null` (a CLI process per run, the binary WebSocket
 * transport) against `ssh … head -c N /dev/zero > /dev/null` (a client process
 * per run over a warm aes128-gcm ControlMaster), interleaved A B B A so load
 * drifts hit both. The A/A spread (best/worst run of the same tool) says how
 * much two identical runs differ here; a ratio within it is a tie.
 */
async function benchCliBulk(): Promise<SectionResult> {
  const gw = await mainGateway();
  const [box] = await ensurePool(1);
  const peer = await startSshPeer('ssh-cli');
  if (!peer) return { title: 'CLI bulk vs OpenSSH', rows: [], notes: ['sshd not installed and not root'], durationMs: 0 };
  const cmGcm = path.join(peer.dir, 'cm-gcm');
  const gcm = ['-c', 'aes128-gcm@openssh.com', ...peer.mux(cmGcm)];
  const bin = path.join(packageRoot(), 'bin', 'openshell.js');
  const devnull = openSync('/dev/null', 'w');
  const bytes = N.bulkBytes;
  const timed = async (what: 'cli' | 'ssh', n: number): Promise<number> => {
    const t = performance.now();
    if (what === 'ssh') await peer.ssh([...gcm, '127.0.0.1', `head -c ${n} /dev/zero`], devnull);
    else {
      const r = await run(process.execPath, [bin, '--gateway', gw.url, 'sandbox', 'exec', box!, '--', 'head', '-c', String(n), '/dev/zero'], { stdoutFd: devnull, timeoutMs: 120_000 });
      if (r.code !== 0) throw new Error(`openshell exec exited ${r.code}: ${r.stderr.slice(0, 300)}`);
    }
    return n / 1e6 / ((performance.now() - t) / 1000);
  };
  const runs: Record<'cli' | 'ssh', number[]> = { cli: [], ssh: [] };
  try {
    await timed('ssh', 64 * 1024 * 1024);
    await timed('cli', 64 * 1024 * 1024);
    const rounds = quick ? 1 : 3;
    for (let i = 0; i < rounds; i++) {
      for (const what of i % 2 === 0 ? (['cli', 'ssh', 'ssh', 'cli'] as const) : (['ssh', 'cli', 'cli', 'ssh'] as const)) {
        runs[what].push(await timed(what, bytes));
        progress(`clibulk: ${what} ${runs[what].at(-1)!.toFixed(0)} MB/s`);
      }
    }
  } finally {
    closeSync(devnull);
    if (existsSync(cmGcm)) spawnSync('ssh', [...peer.base, '-o', `ControlPath=${cmGcm}`, '-O', 'exit', '127.0.0.1'], { stdio: 'ignore', timeout: 5000 });
    await stopChild(peer.daemon, 2000);
  }
  const median = (xs: number[]): number => pct(xs, 50);
  const spread = (xs: number[]): number => Math.max(...xs) / Math.min(...xs);
  raw.cliBulk = median(runs.cli);
  raw.cliBulkSsh = median(runs.ssh);
  raw.cliBulkRatio = raw.cliBulk / raw.cliBulkSsh;
  raw.cliBulkAA = Math.max(spread(runs.cli), spread(runs.ssh));
  const met = raw.cliBulkRatio >= 1 || raw.cliBulkRatio >= 1 / raw.cliBulkAA;
  return {
    title: `CLI bulk: openshell sandbox exec BOX -- head -c ${bytes} /dev/zero > /dev/null vs ssh (aes128-gcm, ControlMaster), interleaved, ${runs.cli.length} runs each`,
    rows: [
      row('openshell CLI MB/s (median)', raw.cliBulk, { peer: raw.cliBulkSsh, digits: 0 }),
      { metric: 'ratio CLI / ssh (medians)', ours: round(raw.cliBulkRatio, 2), peer: '', target: '≥ 1.0, or within the A/A spread', ok: met ? 'yes' : 'NO' },
      row('A/A spread (best / worst run of one tool)', raw.cliBulkAA),
    ],
    notes: [`cli runs: ${runs.cli.map((r) => r.toFixed(0)).join(', ')} MB/s`, `ssh runs: ${runs.ssh.map((r) => r.toFixed(0)).join(', ')} MB/s`],
    durationMs: 0,
  };
}

// ---------------------------------------------------------------- 6. RSS with quiet open execs

async function benchQuiet(): Promise<SectionResult> {
  // A gateway of its own: the main one carries garbage from earlier sections,
  // and a full GC during this one would make the RSS delta meaningless.
  const dir = path.join(tmpRoot, 'gw-quiet');
  await mkdir(dir, { recursive: true });
  const gw = await startGateway(dir, ['--port', '0']);
  const boxes = Array.from({ length: N.quietSandboxes }, (_, i) => `quiet-${i}`);
  await mapLimit(boxes, 10, async (b) => {
    await createSandbox(gw.url, b);
    await waitReady(gw.url, b, 60_000);
  });
  for (let i = 0; i < 10; i++) await execJson(gw.url, boxes[i % boxes.length], ['true']);
  // Warm the streaming path too.
  const warm = Array.from({ length: 20 }, (_, i) => execStream(gw.url, boxes[i % boxes.length], ['sleep', '600']));
  await Promise.all(warm.map((s) => s.started));
  for (const s of warm) s.abort();
  await Promise.all(warm.map((s) => s.done));
  await delay(2000);
  const before = rssKiB(gw.pid);
  const streams: ExecStream[] = [];
  let started = 0;
  let failed = 0;
  let firstErr = '';
  const t = Date.now();
  try {
    await mapLimit(
      Array.from({ length: N.quietExecs }, (_, i) => i),
      16,
      async (i) => {
        const s = execStream(gw.url, boxes[i % boxes.length], ['sleep', '600']);
        streams.push(s);
        try {
          await withTimeout(s.started, 30_000, 'exec start');
          started++;
        } catch (err) {
          failed++;
          firstErr ||= (err as Error).message;
        }
        if ((i + 1) % 250 === 0) progress(`quiet execs open: ${i + 1}`);
      },
    );
    const openMs = Date.now() - t;
    await delay(3000);
    const after = rssKiB(gw.pid);
    const per = (after - before) / Math.max(1, started);
    raw.quietPerExec = per;
    progress(`quiet: ${started} open, ${failed} failed, ${per.toFixed(1)} KiB/exec`);
    const stillOpen = streams.filter((s) => !s.ended).length;
    return {
      title: `gateway RSS with ${N.quietExecs} quiet open execs (\`sleep 600\`, NDJSON streams held open, over ${boxes.length} sandboxes)`,
      rows: [
        row('RSS before, MiB', before / 1024),
        row(`RSS with ${started} open execs, MiB`, after / 1024),
        row('KiB per quiet exec', per, { target: 64, better: 'lower', unit: 'KiB', digits: 1 }),
        row(`open ${N.quietExecs} (16 at a time), s`, openMs / 1000),
      ],
      notes: [`${started} started, ${failed} failed${firstErr ? ` (first: ${firstErr})` : ''}; ${stillOpen} streams still open at measurement`],
      durationMs: 0,
    };
  } finally {
    for (const s of streams) s.abort();
    await withTimeout(Promise.all(streams.map((s) => s.done)), 30_000, 'abort quiet execs').catch(() => undefined);
    await deleteNames(gw.url, boxes).catch(() => undefined);
    await stopChild(gw.child);
  }
}

// ---------------------------------------------------------------- 7. dead-relay detection

/**
 * Quiet execs behind a TCP proxy that black-holes; `restoreAfterMs` lets the
 * transport back after that long (the execs then run `sleep 6; echo resumed`
 * and should re-attach and end with their real exit).
 */
async function deadRelayOnce(
  resumeWindowMs: number | null,
  restoreAfterMs?: number,
): Promise<{ times: number[]; codes: Record<string, number> }> {
  const interval = 500;
  const timeout = 1500;
  const gwPort = await freePort();
  let proxy: TcpProxy | null = null;
  let gw: GatewayChild | null = null;
  const streams: ExecStream[] = [];
  try {
    proxy = await startTcpProxy({ host: '127.0.0.1', port: gwPort });
    const dir = path.join(tmpRoot, `gw-dead-${resumeWindowMs ?? 'default'}`);
    await mkdir(dir, { recursive: true });
    const args = ['--port', String(gwPort), '--sandbox-endpoint', `http://127.0.0.1:${proxy.port}`, '--keepalive-interval-ms', String(interval), '--keepalive-timeout-ms', String(timeout)];
    if (resumeWindowMs !== null) args.push('--exec-resume-window-ms', String(resumeWindowMs));
    gw = await startGateway(dir, args);
    const boxes = ['dead-0', 'dead-1', 'dead-2', 'dead-3', 'dead-4'];
    await mapLimit(boxes, 5, async (b) => {
      await createSandbox(gw!.url, b);
      await waitReady(gw!.url, b);
    });
    const command = restoreAfterMs === undefined ? ['sleep', '600'] : ['sh', '-c', 'sleep 6; echo resumed'];
    for (let i = 0; i < N.deadRelayExecs; i++) streams.push(execStream(gw.url, boxes[i % boxes.length], command));
    await withTimeout(Promise.all(streams.map((s) => s.started)), 20_000, 'dead-relay execs start');
    await delay(1200); // steady state: a few keepalive rounds
    const endedEarly = streams.filter((s) => s.ended).length;
    if (endedEarly) throw new Error(`${endedEarly} streams ended before the blackhole`);
    const t0 = Date.now();
    proxy.blackhole();
    if (restoreAfterMs !== undefined) setTimeout(() => proxy?.restore(), restoreAfterMs).unref();
    const limit = timeout + (resumeWindowMs ?? 15_000) + 10_000;
    const ends = await withTimeout(Promise.all(streams.map((s) => s.done)), limit, 'dead-relay streams end');
    const times = ends.map((r) => r.endedAt - t0);
    const codes: Record<string, number> = {};
    for (const r of ends) codes[r.error ?? `exit ${r.exitCode}`] = (codes[r.error ?? `exit ${r.exitCode}`] ?? 0) + 1;
    return { times, codes };
  } finally {
    for (const s of streams) s.abort();
    if (gw) {
      await deleteAllSandboxes(gw.url, 20_000).catch(() => undefined);
      await stopChild(gw.child);
    }
    await proxy?.close();
  }
}

async function benchDeadRelay(): Promise<SectionResult> {
  const r0 = await deadRelayOnce(0);
  progress(`dead relay (window 0): ${r0.times.join(' ')} ms ${JSON.stringify(r0.codes)}`);
  raw.deadMax = Math.max(...r0.times);
  raw.deadMedian = pct(r0.times, 50);
  const rows: Row[] = [
    row('window 0: detection max ms', raw.deadMax, { target: 2500, better: 'lower', unit: 'ms (timeout 1500 + 1 s)', digits: 0 }),
    row('window 0: detection median ms', raw.deadMedian, { digits: 0 }),
    row('window 0: detection min ms', Math.min(...r0.times), { digits: 0 }),
  ];
  const notes = [`window 0 end codes: ${JSON.stringify(r0.codes)}`];
  if (!quick) {
    const r1 = await deadRelayOnce(null);
    progress(`dead relay (default window): ${r1.times.join(' ')} ms ${JSON.stringify(r1.codes)}`);
    raw.deadDefaultMax = Math.max(...r1.times);
    rows.push(
      row('default 15 s resume window: stream end max ms', raw.deadDefaultMax, { target: 17_500, better: 'lower', unit: 'ms (timeout + window + 1 s)', digits: 0 }),
      row('default 15 s resume window: stream end median ms', pct(r1.times, 50), { digits: 0 }),
    );
    notes.push(`default window end codes: ${JSON.stringify(r1.codes)}`);
    // Transparent resume: the transport comes back 3 s into the outage.
    const r2 = await deadRelayOnce(null, 3000);
    progress(`dead relay (restored after 3 s): ${r2.times.join(' ')} ms ${JSON.stringify(r2.codes)}`);
    raw.resumedExits = r2.codes['exit 0'] ?? 0;
    rows.push(
      row('transport back after 3 s: execs that reached their real exit', raw.resumedExits, {
        target: N.deadRelayExecs,
        better: 'higher',
        unit: `of ${N.deadRelayExecs}`,
        digits: 0,
      }),
      row('transport back after 3 s: stream end max ms', Math.max(...r2.times), { digits: 0 }),
    );
    notes.push(`restored after 3 s end codes: ${JSON.stringify(r2.codes)}`);
  }
  return {
    title: `dead-relay detection: ${N.deadRelayExecs} quiet execs, supervisors behind a TCP proxy that black-holes (no FIN/RST); --keepalive-interval-ms 500 --keepalive-timeout-ms 1500; time from blackhole to stream end`,
    rows,
    notes,
    durationMs: 0,
  };
}

// ---------------------------------------------------------------- 8. egress

async function benchEgress(): Promise<SectionResult> {
  const r = await runEgressBench({ quick });
  return { title: r.title, rows: r.rows, notes: [], durationMs: 0 };
}

// ---------------------------------------------------------------- summary

function summary(): Row[] {
  const has = (k: string) => raw[k] !== undefined;
  const rows: Row[] = [];
  const add = (section: string, metric: string, ours: number, peer: number | undefined, target: number | undefined, better: 'lower' | 'higher', unit: string, digits = 1) => {
    const r = row(metric, ours, { peer, target, better, unit, digits });
    rows.push({ ...r, metric: `${section}: ${metric}` });
  };
  if (has('createP50')) {
    add('create', 'create→Ready p50 ms', raw.createP50, undefined, 150, 'lower', 'ms');
    add('create', 'create→Ready p95 ms', raw.createP95, undefined, undefined, 'lower', 'ms');
  }
  if (has('rssPerSandbox')) add('memory', 'gateway RSS per idle sandbox KiB', raw.rssPerSandbox, undefined, 100, 'lower', 'KiB');
  if (has('execP50')) {
    add('exec', 'exec `true` p50 ms (peer: ssh ControlMaster)', raw.execP50, raw.sshMuxP50, 12, 'lower', 'ms', 2);
    add('exec', 'exec `true` p99 ms (peer: ssh ControlMaster)', raw.execP99, raw.sshMuxP99, undefined, 'lower', 'ms', 2);
    add('exec', 'exec p50 ms, peer: ssh new connection', raw.execP50, raw.sshNewP50, undefined, 'lower', 'ms', 2);
    add('exec', 'c=16 execs/s (peer: ssh ControlMaster c=16)', raw.execRate16, raw.sshMuxRate16, 300, 'higher', '/s', 0);
    add('exec', 'c=16 p50 / p99 ms', raw.execC16P50, raw.sshMuxC16P50, undefined, 'lower', 'ms');
    rows[rows.length - 1].ours = `${round(raw.execC16P50, 1)} / ${round(raw.execC16P99, 1)}`;
    if (has('sshMuxC16P99')) rows[rows.length - 1].peer = `${round(raw.sshMuxC16P50, 1)} / ${round(raw.sshMuxC16P99, 1)}`;
    add('exec', 'c=64 execs/s', raw.execRate64, undefined, undefined, 'higher', '/s', 0);
    add('exec', 'c=64 p50 / p99 ms', raw.execC64P50, undefined, undefined, 'lower', 'ms');
    rows[rows.length - 1].ours = `${round(raw.execC64P50, 1)} / ${round(raw.execC64P99, 1)}`;
  }
  if (has('bulk') || has('sshBulk')) add('bulk', 'stdout MB/s (peer: ssh aes128-gcm)', raw.bulk ?? NaN, raw.sshBulk, 400, 'higher', 'MB/s', 0);
  if (has('cliBulk')) add('bulk', 'CLI exec MB/s (peer: ssh aes128-gcm, same run)', raw.cliBulk, raw.cliBulkSsh, undefined, 'higher', 'MB/s', 0);
  if (has('cliBulkRatio')) add('bulk', `CLI / ssh ratio (A/A spread ${round(raw.cliBulkAA, 2)})`, raw.cliBulkRatio, undefined, 1, 'higher', '', 2);
  if (has('quietPerExec')) add('memory', 'gateway RSS per quiet open exec KiB', raw.quietPerExec, undefined, 64, 'lower', 'KiB');
  if (has('deadMax')) {
    add('dead relay', 'detection max ms (timeout 1500 + 1 s, window 0)', raw.deadMax, undefined, 2500, 'lower', 'ms', 0);
    add('dead relay', 'detection median ms', raw.deadMedian, undefined, undefined, 'lower', 'ms', 0);
  }
  if (has('deadDefaultMax')) add('dead relay', 'stream end max ms, default 15 s window', raw.deadDefaultMax, undefined, 17_500, 'lower', 'ms', 0);
  if (has('resumedExits')) add('dead relay', 'execs resumed to their real exit, transport back after 3 s', raw.resumedExits, undefined, N.deadRelayExecs, 'higher', '', 0);
  return rows;
}

function markdown(rows: Row[]): string {
  const lines = ['| section | metric | ours | peer | target | ok |', '|---|---|---|---|---|---|'];
  for (const r of rows) {
    const [section, ...rest] = r.metric.split(': ');
    lines.push(`| ${section} | ${rest.join(': ')} | ${r.ours} | ${r.peer === '' ? '—' : r.peer} | ${r.target || '—'} | ${r.ok || '—'} |`);
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------- main

// ---------------------------------------------------------------- isolation on and off

async function benchIsolation(): Promise<SectionResult> {
  const r = await runIsolationBench(tmpRoot, quick);
  raw.isoExecConfined = r.execP50.confined;
  raw.isoExecUnconfined = r.execP50.unconfined;
  raw.isoExecAA = Math.abs(r.execP50.confinedAA / r.execP50.confined - 1);
  raw.isoCreateConfined = r.createP50.confined;
  raw.isoConfinementKiB = r.confinementPssKiB;
  const ssh = raw.sshMuxP50;
  return {
    title: `isolation on and off, same run (${r.samples.exec} interleaved execs each, ${r.samples.create} creates each, ${r.samples.idle} idle sandboxes each)`,
    rows: [
      row('exec `true` p50 ms, confined (peer: unconfined)', r.execP50.confined, { peer: r.execP50.unconfined, digits: 2 }),
      row('exec `true` p50 ms, second confined sandbox (A/A)', r.execP50.confinedAA, { peer: r.execP50.confined, digits: 2 }),
      ...(ssh !== undefined
        ? [row('confined exec p50 / OpenSSH ControlMaster p50', r.execP50.confined / ssh, { target: 0.8, better: 'lower', digits: 2 })]
        : []),
      row('create→Ready p50 ms, confined (peer: unconfined)', r.createP50.confined, { peer: r.createP50.unconfined, target: 150, better: 'lower', unit: 'ms', digits: 1 }),
      row('create→Ready p95 ms, confined (peer: unconfined)', r.createP95.confined, { peer: r.createP95.unconfined, digits: 1 }),
      row('namespaces + init per idle sandbox, PSS KiB', r.confinementPssKiB, { target: 2048, better: 'lower', unit: 'KiB', digits: 0 }),
      row('supervisor RSS KiB, confined (peer: unconfined)', r.supervisorRssKiB.confined, { peer: r.supervisorRssKiB.unconfined, digits: 0 }),
    ],
    notes: [
      'confined: bwrap (mount, PID, IPC, UTS, net, cgroup namespaces), veth + nftables, nsenter + setsid + setpriv per process; the ratio to OpenSSH uses the ssh section of the same run',
      'namespaces + init: PSS of the confinement’s own processes (bwrap’s monitor, the sandbox’s PID 1, the holder); kernel memory of the namespaces themselves is not in it',
    ],
    durationMs: 0,
  };
}

const SECTIONS: Record<SectionName, { fn: () => Promise<SectionResult>; timeoutMs: number }> = {
  create: { fn: benchCreate, timeoutMs: 90_000 },
  rss: { fn: benchRss, timeoutMs: 180_000 },
  exec: { fn: benchExec, timeoutMs: 180_000 },
  bulk: { fn: benchBulk, timeoutMs: 120_000 },
  ssh: { fn: benchSsh, timeoutMs: 240_000 },
  isolation: { fn: benchIsolation, timeoutMs: 300_000 },
  clibulk: { fn: benchCliBulk, timeoutMs: 300_000 },
  quiet: { fn: benchQuiet, timeoutMs: 180_000 },
  deadrelay: { fn: benchDeadRelay, timeoutMs: 120_000 },
  egress: { fn: benchEgress, timeoutMs: 300_000 },
};

process.once('exit', () => {
  killEverythingSync();
  if (tmpRoot) rmSync(tmpRoot, { recursive: true, force: true });
});
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(sig, () => {
    progress(`${sig}: killing children`);
    process.exit(130);
  });
}

async function mainFn(): Promise<number> {
  tmpRoot = await mkdtemp(path.join(os.tmpdir(), 'openshell-bench-'));
  const started = Date.now();
  let failures = 0;
  try {
    for (const name of only) {
      const s = SECTIONS[name];
      // Sandboxes started by an earlier section finish their start-up work (V8's
      // post-start GCs) for tens of seconds; timing sections wait for the CPU to be quiet.
      if (name !== 'create' && name !== 'rss') await settle();
      progress(`section ${name}: start`);
      const t = Date.now();
      const load0 = os.loadavg()[0];
      let res: SectionResult;
      try {
        res = await withTimeout(s.fn(), s.timeoutMs, `section ${name}`);
      } catch (err) {
        failures++;
        res = { title: name, rows: [], notes: [], error: (err as Error).stack ?? String(err), durationMs: 0 };
        progress(`section ${name}: FAILED: ${(err as Error).message}`);
      }
      res.durationMs = Date.now() - t;
      res.load = [Number(load0.toFixed(2)), Number(os.loadavg()[0].toFixed(2))];
      results[name] = res;
      console.log(`\n## ${name}: ${res.title}`);
      if (res.rows.length) console.table(res.rows);
      for (const n of res.notes) console.log(`  note: ${n}`);
      console.log(`  (${(res.durationMs / 1000).toFixed(1)} s; 1-min load average ${res.load[0]} → ${res.load[1]} on ${os.cpus().length} CPUs)`);
      if (res.error) console.log(`  ERROR: ${res.error.split('\n')[0]}`);
      progress(`section ${name}: done in ${(res.durationMs / 1000).toFixed(1)} s`);
    }
  } finally {
    if (main && main.child.exitCode === null) {
      progress('deleting sandboxes and stopping the main gateway');
      const n = await deleteAllSandboxes(main.url, 60_000).catch(() => -1);
      progress(`deleted ${n} sandboxes`);
      await stopChild(main.child);
    }
  }
  const sum = summary();
  console.log('\n## summary');
  console.log(markdown(sum));
  const out = {
    date: new Date().toISOString(),
    quick,
    only,
    host: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? '', memGiB: Math.round(os.totalmem() / 2 ** 30), node: process.version, platform: `${os.platform()} ${os.release()}` },
    totalMs: Date.now() - started,
    summary: sum,
    raw,
    sections: results,
  };
  const dir = path.join(packageRoot(), 'bench', 'results');
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, `bench-${out.date.replace(/[:.]/g, '-')}.json`);
  const text = JSON.stringify(out, null, 2) + '\n';
  await writeFile(file, text);
  await writeFile(path.join(dir, 'latest.json'), text);
  progress(`wrote bench/results/${path.basename(file)} and bench/results/latest.json (${((Date.now() - started) / 1000).toFixed(0)} s total)`);
  await rm(tmpRoot, { recursive: true, force: true }).catch(() => undefined);
  return failures;
}

mainFn().then(
  (failures) => process.exit(failures ? 1 : 0),
  (err) => {
    process.stderr.write(`bench failed: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);

/**
 * Microbenchmark of the exec output path, stage by stage (bulk stdout).
 *
 *   node dist/bench/exec-path.js [--mb 256] [--runs 3] [--only sup,gw,full]
 *
 *   sup   supervisor alone: ExecRegistry + serveExecRelay (`head -c N /dev/zero`)
 *         → a `ws` server in another process that only counts output frames.
 *   gw    gateway alone: ExecRun + execReadable → Fastify NDJSON response, fed by a
 *         fake supervisor (another process) sending pre-built 64 KiB output
 *         frames as fast as its HIGH/LOW water marks allow; decoded by this
 *         process with the bench client (`execStream`).
 *   full  both: the real supervisor stage dials the gateway stage.
 *
 * Each stage process reports its CPU time, so idle time shows which stage waits.
 * BENCH_CHILD_PROF=<dir> writes a V8 CPU profile of every stage process there.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocket, WebSocketServer } from 'ws';
import { execStream } from './lib.js';

const self = fileURLToPath(import.meta.url);
const argv = process.argv.slice(2);
const arg = (name: string, dflt: string): string => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] ? argv[i + 1]! : dflt;
};
const role = arg('role', 'main');
const WS_OPTS = { perMessageDeflate: false, skipUTF8Validation: true, maxPayload: 64 * 1024 * 1024 } as const;

interface Msg {
  type: string;
  [k: string]: unknown;
}
const send = (m: Msg): void => void process.send?.(m);
const cpuMs = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

// ------------------------------------------------------------ roles

/** Counts output frames of one exec relay per connection; the peer is the supervisor stage. */
async function roleSink(): Promise<void> {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', ...WS_OPTS });
  await new Promise((r) => wss.once('listening', r));
  wss.on('connection', (ws, req) => {
    (req.socket as import('node:net').Socket).setNoDelay(true);
    const bytes = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('bytes'));
    let got = 0;
    const t0 = performance.now();
    const c0 = cpuMs();
    ws.on('message', (data: Buffer, isBinary) => {
      if (isBinary) got += data.length - 9;
      else if (String(data).includes('"exit"')) {
        const s = (performance.now() - t0) / 1000;
        send({ type: 'sinkDone', bytes: got, mbps: got / 1e6 / s, cpu: (cpuMs() - c0) / (s * 1000) });
      }
    });
    ws.send(JSON.stringify({ op: 'start', execId: `b${Date.now()}`, command: ['head', '-c', String(bytes), '/dev/zero'], env: {}, tty: false, timeoutSeconds: 0 }));
  });
  send({ type: 'ready', port: (wss.address() as { port: number }).port });
}

/** The real supervisor stage: dials `--url` on command and serves the relay against an ExecRegistry. */
async function roleSup(): Promise<void> {
  const { ExecRegistry } = await import('../src/supervisor/exec-registry.js');
  const { serveExecRelay } = await import('../src/supervisor/exec-relay.js');
  const { silentLogger } = await import('../src/log.js');
  const spoolDir = mkdtempSync(join(process.platform === 'linux' ? '/dev/shm' : tmpdir(), 'os-bench-'));
  const registry = new ExecRegistry({ log: silentLogger, spoolDir, baseEnv: () => ({ PATH: process.env.PATH ?? '' }), defaultCwd: tmpdir() });
  process.on('exit', () => rmSync(spoolDir, { recursive: true, force: true }));
  process.on('message', (m: Msg) => {
    if (m.type !== 'dial') return;
    const c0 = cpuMs();
    const t0 = performance.now();
    const ws = new WebSocket(String(m.url), WS_OPTS);
    ws.on('upgrade', (res) => res.socket.setNoDelay(true));
    ws.once('open', () => {
      void serveExecRelay(ws, registry, silentLogger).then(() => {
        const s = (performance.now() - t0) / 1000;
        send({ type: 'supDone', cpu: (cpuMs() - c0) / (s * 1000) });
      });
    });
  });
  send({ type: 'ready' });
}

/** A fake supervisor: answers `start` with pre-built 64 KiB stdout frames as fast as HIGH/LOW water allow. */
async function roleFakeSup(): Promise<void> {
  const { encodeOutput } = await import('../src/protocol/exec.js');
  const CHUNK = 64 * 1024;
  const HIGH = 1024 * 1024;
  const LOW = 256 * 1024;
  process.on('message', (m: Msg) => {
    if (m.type !== 'dial') return;
    const bytes = Number(m.bytes);
    const c0 = cpuMs();
    const t0 = performance.now();
    const ws = new WebSocket(String(m.url), WS_OPTS);
    ws.on('upgrade', (res) => res.socket.setNoDelay(true));
    ws.once('message', (data) => {
      const { execId } = JSON.parse(String(data)) as { execId: string };
      ws.send(JSON.stringify({ ev: 'started', execId, pid: 1 }));
      const payload = Buffer.alloc(CHUNK);
      let off = 0;
      const pump = (): void => {
        while (off < bytes) {
          if (ws.bufferedAmount > HIGH) return;
          const n = Math.min(CHUNK, bytes - off);
          ws.send(encodeOutput(1, off, payload.subarray(0, n)), { binary: true }, () => {
            if (ws.bufferedAmount <= LOW) pump();
          });
          off += n;
        }
        if (off >= bytes && !sentExit) {
          sentExit = true;
          ws.send(JSON.stringify({ ev: 'exit', exitCode: 0, signal: null, timedOut: false, durationMs: 1 }));
          ws.close(1000);
          const s = (performance.now() - t0) / 1000;
          ws.once('close', () => send({ type: 'supDone', cpu: (cpuMs() - c0) / (s * 1000) }));
        }
      };
      let sentExit = false;
      pump();
    });
  });
  send({ type: 'ready' });
}

/** The gateway stage: POST exec waits for the next relay WebSocket and streams it as NDJSON. */
async function roleGw(): Promise<void> {
  const { default: Fastify } = await import('fastify');
  const { ExecRun } = await import('../src/relay/exec-run.js');
  const { execReadable } = await import('../src/relay/exec-stream.js');
  const { keepAlive } = await import('../src/relay/heartbeat.js');
  const idle: WebSocket[] = [];
  const waiting: ((ws: WebSocket) => void)[] = [];
  const wss = new WebSocketServer({ noServer: true, ...WS_OPTS });
  const app = Fastify();
  app.server.on('upgrade', (req, socket, head) => {
    (socket as import('node:net').Socket).setNoDelay(true);
    wss.handleUpgrade(req, socket, head, (ws) => {
      keepAlive(ws, { intervalMs: 15_000, timeoutMs: 45_000 });
      const w = waiting.shift();
      if (w) w(ws);
      else idle.push(ws);
    });
  });
  app.server.on('connection', (s: import('node:net').Socket) => s.setNoDelay(true));
  let c0 = 0;
  let t0 = 0;
  app.post('/v1/sandboxes/:name/exec', async (request, reply) => {
    c0 = cpuMs();
    t0 = performance.now();
    send({ type: 'needRelay' });
    const ws = idle.shift() ?? (await new Promise<WebSocket>((r) => waiting.push(r)));
    const body = request.body as { command: string | string[] };
    const command = typeof body.command === 'string' ? ['sh', '-c', body.command] : body.command;
    const run = new ExecRun(ws, { op: 'start', execId: `ex_${Date.now()}`, command, env: {}, tty: false, timeoutSeconds: 0 });
    reply.raw.once('close', () => {
      const s = (performance.now() - t0) / 1000;
      send({ type: 'gwDone', cpu: (cpuMs() - c0) / (s * 1000) });
    });
    return reply.type('application/x-ndjson').send(execReadable(run));
  });
  await app.listen({ port: 0, host: '127.0.0.1' });
  send({ type: 'ready', port: (app.server.address() as { port: number }).port });
}

// ------------------------------------------------------------ orchestration

function spawnRole(name: string): Promise<{ child: ChildProcess; port: number }> {
  const child = fork(self, ['--role', name], { execArgv: [...process.execArgv, ...(process.env.BENCH_CHILD_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CHILD_PROF}`] : [])], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`${name} exited ${code}`)));
    child.on('message', (m: Msg) => {
      if (m.type === 'ready') resolve({ child, port: Number(m.port ?? 0) });
    });
  });
}

function next(child: ChildProcess, type: string): Promise<Msg> {
  return new Promise((resolve) => {
    const on = (m: Msg): void => {
      if (m.type !== type) return;
      child.off('message', on);
      resolve(m);
    };
    child.on('message', on);
  });
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const pct = (x: unknown): string => `${Math.round(Number(x) * 100)}%`;

async function main(): Promise<void> {
  const bytes = Number(arg('mb', '256')) * 1024 * 1024;
  const runs = Number(arg('runs', '3'));
  const only = arg('only', 'sup,gw,full').split(',');
  const children: ChildProcess[] = [];
  process.on('exit', () => children.forEach((c) => c.kill('SIGKILL')));
  const out: Record<string, number> = {};

  if (only.includes('sup')) {
    const sink = await spawnRole('sink');
    const sup = await spawnRole('sup');
    children.push(sink.child, sup.child);
    const rates: number[] = [];
    for (let i = 0; i < runs; i++) {
      const done = next(sink.child, 'sinkDone');
      const supDone = next(sup.child, 'supDone');
      sup.child.send({ type: 'dial', url: `ws://127.0.0.1:${sink.port}/?bytes=${bytes}` });
      const [r, s] = await Promise.all([done, supDone]);
      if (r.bytes !== bytes) throw new Error(`sup stage: got ${r.bytes} of ${bytes}`);
      rates.push(Number(r.mbps));
      process.stderr.write(`sup stage: ${Number(r.mbps).toFixed(0)} MB/s (cpu: supervisor ${pct(s.cpu)}, sink ${pct(r.cpu)})\n`);
    }
    out.sup = median(rates);
  }

  for (const mode of ['gw', 'full'] as const) {
    if (!only.includes(mode)) continue;
    const gw = await spawnRole('gw');
    const sup = await spawnRole(mode === 'gw' ? 'fakesup' : 'sup');
    children.push(gw.child, sup.child);
    gw.child.on('message', (m: Msg) => {
      if (m.type === 'needRelay') sup.child.send({ type: 'dial', url: `ws://127.0.0.1:${gw.port}/relay`, bytes });
    });
    const rates: number[] = [];
    for (let i = 0; i < runs; i++) {
      const gwDone = next(gw.child, 'gwDone');
      const supDone = next(sup.child, 'supDone');
      const c0 = cpuMs();
      const t0 = performance.now();
      const r = await execStream(`http://127.0.0.1:${gw.port}`, 'bench', `head -c ${bytes} /dev/zero`).done;
      const s = (performance.now() - t0) / 1000;
      const clientCpu = (cpuMs() - c0) / (s * 1000);
      if (r.stdoutBytes !== bytes || r.exitCode !== 0) throw new Error(`${mode}: got ${r.stdoutBytes} bytes, exit ${r.exitCode}, error ${r.error}`);
      const [g, su] = await Promise.all([gwDone, supDone]);
      const mbps = bytes / 1e6 / s;
      rates.push(mbps);
      process.stderr.write(
        `${mode} stage: ${mbps.toFixed(0)} MB/s, ${(bytes / r.lines / 1024).toFixed(1)} KiB/line (cpu: gateway ${pct(g.cpu)}, ${mode === 'gw' ? 'fake ' : ''}supervisor ${pct(su.cpu)}, client ${pct(clientCpu)})\n`,
      );
    }
    out[mode] = median(rates);
  }
  // A clean exit lets `node --cpu-prof` write every stage's profile.
  await Promise.all(children.map((c) => new Promise((r) => (c.once('exit', r), c.send({ type: 'exit' })))));
  process.stdout.write(`${JSON.stringify({ medianMBps: out, loadavg: (await import('node:os')).loadavg().map((x) => +x.toFixed(2)) })}\n`);
  process.exit(0);
}

process.on('message', (m: Msg) => {
  if (m.type === 'exit') process.exit(0);
});
const roles: Record<string, () => Promise<void>> = { main, sink: roleSink, sup: roleSup, fakesup: roleFakeSup, gw: roleGw };
await roles[role]!();

/**
 * Shared helpers for `bench/run.ts`: child-process bookkeeping (everything we
 * start is killed on exit, even on failure), a gateway child, a small HTTP
 * client, an NDJSON exec stream reader with a fast path for output lines, and
 * statistics.
 */
import http from 'node:http';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { packageRoot } from '../src/paths.js';
import { listeningUrl } from './listening.js';

// ---------------------------------------------------------------- logging

const t0 = Date.now();
export function progress(msg: string): void {
  process.stderr.write(`[bench +${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}\n`);
}

// ---------------------------------------------------------------- children

const children = new Set<ChildProcess>();
/** State dirs of gateways we started: supervisors carry them in their environment. */
const stateDirs = new Set<string>();

export function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/**
 * Last resort (synchronous, for `exit`): SIGKILL every child we started and
 * every supervisor (and its processes) whose environment names one of our
 * state dirs. Each is killed by its pid.
 */
export function killEverythingSync(): void {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null && c.pid) {
      try {
        process.kill(c.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
  if (stateDirs.size === 0) return;
  let pids: string[] = [];
  try {
    pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p));
  } catch {
    return;
  }
  // Supervisors carry OPENSHELL_SPOOL_DIR=<stateDir>/…, the processes they start HOME=<stateDir>/….
  const tags = [...stateDirs].map((d) => `=${d}/`);
  for (const pid of pids) {
    if (Number(pid) === process.pid) continue;
    try {
      const env = readFileSync(`/proc/${pid}/environ`, 'latin1');
      if (tags.some((t) => env.includes(t))) process.kill(Number(pid), 'SIGKILL');
    } catch {
      // gone or not readable
    }
  }
}

export async function stopChild(child: ChildProcess, graceMs = 3000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const done = await Promise.race([exited.then(() => true), delay(graceMs).then(() => false)]);
  if (!done) {
    child.kill('SIGKILL');
    await Promise.race([exited, delay(2000)]);
  }
}

export { freePort } from './ports.js';

// ---------------------------------------------------------------- gateway

export interface GatewayChild {
  child: ChildProcess;
  pid: number;
  url: string;
  stateDir: string;
}

export async function startGateway(stateDir: string, args: string[] = [], nodeArgs: string[] = []): Promise<GatewayChild> {
  stateDirs.add(stateDir);
  const bin = join(packageRoot(), 'bin', 'openshell.js');
  const child = track(
    spawn(process.execPath, [...nodeArgs, bin, 'gateway', 'start', '--state-dir', stateDir, '--log-level', 'warn', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env },
    }),
  );
  const url = await listeningUrl(child, 20_000);
  return { child, pid: child.pid!, url, stateDir };
}

/** VmRSS of a process in KiB. */
export function rssKiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(status);
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

// ---------------------------------------------------------------- HTTP

export const agent = new http.Agent({ keepAlive: true, maxSockets: 256, maxFreeSockets: 256 });
/** For long-held streams: one socket each, never pooled with the short calls. */
export const streamAgent = new http.Agent({ keepAlive: false, maxSockets: Infinity });

export interface JsonResponse {
  status: number;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

export function request(
  method: string,
  url: string,
  body?: unknown,
  headers: Record<string, string> = {},
  timeoutMs = 30_000,
): Promise<JsonResponse> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = http.request(
      url,
      {
        method,
        agent,
        headers: {
          accept: 'application/json',
          ...(payload ? { 'content-type': 'application/json', 'content-length': String(payload.length) } : {}),
          ...headers,
        },
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('end', () => {
          clearTimeout(timer);
          const text = Buffer.concat(parts).toString('utf8');
          let parsed: unknown = text;
          try {
            parsed = text ? JSON.parse(text) : null;
          } catch {
            // not JSON
          }
          resolve({ status: res.statusCode ?? 0, body: parsed });
        });
        res.on('error', reject);
      },
    );
    const timer = setTimeout(() => req.destroy(new Error(`${method} ${url} timed out after ${timeoutMs} ms`)), timeoutMs);
    req.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.end(payload);
  });
}

/** Reads a sandbox's watch stream until it is Ready (or Error/timeout). Resolves with Date.now() at Ready. */
export function waitReady(base: string, name: string, timeoutMs = 30_000): Promise<number> {
  return new Promise((resolve, reject) => {
    let buf = '';
    let settled = false;
    const req = http.get(`${base}/v1/sandboxes/${name}/watch`, { agent: streamAgent, headers: { accept: 'application/x-ndjson' } }, (res) => {
      if (res.statusCode !== 200) {
        finish(new Error(`watch ${name}: HTTP ${res.statusCode}`));
        return;
      }
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        buf += d;
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!line.trim()) continue;
          const snap = JSON.parse(line) as { phase?: string };
          if (snap.phase === 'Ready') return finish(null, Date.now());
          if (snap.phase === 'Error' || snap.phase === 'Deleting') return finish(new Error(`${name} went ${snap.phase}`));
        }
      });
      res.on('end', () => finish(new Error(`watch ${name} ended before Ready`)));
      res.on('error', () => {});
    });
    req.on('error', (err) => finish(err));
    const timer = setTimeout(() => finish(new Error(`${name} not Ready in ${timeoutMs} ms`)), timeoutMs);
    function finish(err: Error | null, at?: number): void {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.destroy();
      if (err) reject(err);
      else resolve(at!);
    }
  });
}

export async function createSandbox(base: string, name: string, env?: Record<string, string>): Promise<void> {
  const res = await request('POST', `${base}/v1/sandboxes`, { name, labels: { bench: 'true' }, ...(env ? { env } : {}) });
  if (res.status !== 201) throw new Error(`create ${name}: HTTP ${res.status} ${JSON.stringify(res.body)}`);
}

/** Deletes every sandbox of the gateway and waits (bounded) until the list is empty. */
export async function deleteAllSandboxes(base: string, timeoutMs = 60_000): Promise<number> {
  const list = await request('GET', `${base}/v1/sandboxes`);
  const names: string[] = (list.body?.sandboxes ?? []).map((s: { name: string }) => s.name);
  await mapLimit(names, 16, async (n) => {
    try {
      await request('DELETE', `${base}/v1/sandboxes/${n}`);
    } catch {
      // retried by the wait below / killed on exit
    }
  });
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const now = await request('GET', `${base}/v1/sandboxes`);
    if ((now.body?.sandboxes ?? []).length === 0) break;
    await delay(100);
  }
  return names.length;
}

export async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  });
  await Promise.all(workers);
  return out;
}

// ---------------------------------------------------------------- exec

export async function execJson(base: string, name: string, command: string[] | string): Promise<JsonResponse> {
  return request('POST', `${base}/v1/sandboxes/${name}/exec`, { command }, { accept: 'application/json' });
}

export interface StreamResult {
  stdoutBytes: number;
  stderrBytes: number;
  exitCode: number | null;
  error: string | null;
  /** Date.now() when the response ended (or failed). */
  endedAt: number;
  /** Number of NDJSON lines seen. */
  lines: number;
}

export interface ExecStream {
  started: Promise<string>;
  done: Promise<StreamResult>;
  /** True once the response has ended or failed. */
  readonly ended: boolean;
  abort(): void;
}

const STDOUT_PREFIX = Buffer.from('{"type":"stdout","data":"');
const STDERR_PREFIX = Buffer.from('{"type":"stderr","data":"');

/** Decoded length of a base64 run, from its length and padding (no decoding). */
function b64Len(line: Buffer, start: number, end: number): number {
  const n = end - start;
  let pad = 0;
  if (n > 0 && line[end - 1] === 61) pad++;
  if (n > 1 && line[end - 2] === 61) pad++;
  return (n / 4) * 3 - pad;
}

/**
 * POSTs an exec in NDJSON mode and consumes the stream with a line splitter
 * on Buffers: output lines are counted from their base64 length (checked
 * against one real decode), every other line is JSON.parse'd.
 */
export function execStream(base: string, name: string, command: string[] | string, extra: Record<string, unknown> = {}): ExecStream {
  let resolveStarted!: (id: string) => void;
  let rejectStarted!: (e: Error) => void;
  const started = new Promise<string>((res, rej) => {
    resolveStarted = res;
    rejectStarted = rej;
  });
  started.catch(() => {});
  const result: StreamResult = { stdoutBytes: 0, stderrBytes: 0, exitCode: null, error: null, endedAt: 0, lines: 0 };
  let req!: http.ClientRequest;
  let checked = false;
  let finished = false;
  const done = new Promise<StreamResult>((resolve) => {
    let ended = false;
    const end = (err?: string): void => {
      if (ended) return;
      ended = true;
      finished = true;
      result.endedAt = Date.now();
      if (err && !result.error) result.error = err;
      rejectStarted(new Error(result.error ?? 'stream ended before started'));
      resolve(result);
    };
    const handleLine = (line: Buffer): void => {
      if (line.length === 0) return;
      result.lines++;
      for (const [prefix, key] of [
        [STDOUT_PREFIX, 'stdoutBytes'],
        [STDERR_PREFIX, 'stderrBytes'],
      ] as const) {
        if (line.length > prefix.length && line.compare(prefix, 0, prefix.length, 0, prefix.length) === 0) {
          const q = line.indexOf(34, prefix.length);
          const n = b64Len(line, prefix.length, q);
          if (!checked) {
            checked = true;
            const real = Buffer.from(line.subarray(prefix.length, q).toString('latin1'), 'base64').length;
            if (real !== n) throw new Error(`base64 length check failed: ${real} != ${n}`);
          }
          result[key] += n;
          return;
        }
      }
      const ev = JSON.parse(line.toString('utf8')) as { type: string; execId?: string; exitCode?: number; code?: string; message?: string; data?: string };
      if (ev.type === 'started') resolveStarted(ev.execId ?? '');
      else if (ev.type === 'exit') result.exitCode = ev.exitCode ?? null;
      else if (ev.type === 'error') result.error = ev.code ?? 'error';
      else if (ev.type === 'stdout') result.stdoutBytes += Buffer.from(ev.data ?? '', 'base64').length;
      else if (ev.type === 'stderr') result.stderrBytes += Buffer.from(ev.data ?? '', 'base64').length;
    };
    const payload = Buffer.from(JSON.stringify({ command, ...extra }));
    req = http.request(
      `${base}/v1/sandboxes/${name}/exec`,
      {
        method: 'POST',
        agent: streamAgent,
        headers: { accept: 'application/x-ndjson', 'content-type': 'application/json', 'content-length': String(payload.length) },
      },
      (res) => {
        if (res.statusCode !== 200) {
          const parts: Buffer[] = [];
          res.on('data', (d: Buffer) => parts.push(d));
          res.on('end', () => end(`HTTP ${res.statusCode} ${Buffer.concat(parts).toString().slice(0, 200)}`));
          res.on('error', () => end('response error'));
          return;
        }
        let carry: Buffer[] = [];
        res.on('data', (chunk: Buffer) => {
          try {
            let start = 0;
            for (;;) {
              const nl = chunk.indexOf(10, start);
              if (nl < 0) {
                if (start < chunk.length) carry.push(chunk.subarray(start));
                break;
              }
              let line = chunk.subarray(start, nl);
              if (carry.length > 0) {
                carry.push(line);
                line = Buffer.concat(carry);
                carry = [];
              }
              handleLine(line);
              start = nl + 1;
            }
          } catch (err) {
            end(`parse: ${(err as Error).message}`);
            req.destroy();
          }
        });
        res.on('end', () => end());
        res.on('error', (err) => end(`response: ${err.message}`));
        res.on('close', () => end('closed'));
      },
    );
    req.on('error', (err) => end(`request: ${err.message}`));
    req.end(payload);
  });
  return {
    started,
    done,
    get ended() {
      return finished;
    },
    abort: () => req.destroy(),
  };
}

// ---------------------------------------------------------------- stats

export function pct(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const idx = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[idx];
}

export function round(n: number | null | undefined, digits = 2): number | string {
  return n === null || n === undefined || !Number.isFinite(n) ? 'n/a' : Number(n.toFixed(digits));
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: timed out after ${ms} ms`)), ms);
    }),
  ]);
}

/** Busy jiffies and all jiffies of the whole machine, from /proc/stat. */
function cpuJiffies(): { busy: number; total: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  const idle = (f[3] ?? 0) + (f[4] ?? 0);
  const total = f.reduce((a, b) => a + b, 0);
  return { busy: total - idle, total };
}

/**
 * Waits until the machine's CPU stayed below `maxBusy` (fraction of all
 * cores) for three 500 ms windows in a row, or `timeoutMs` passed; returns
 * the last reading.
 */
export async function settle(maxBusy = 0.08, timeoutMs = 60_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let busy = 1;
  let quiet = 0;
  let announced = false;
  for (;;) {
    const a = cpuJiffies();
    await new Promise((r) => setTimeout(r, 500));
    const b = cpuJiffies();
    busy = (b.busy - a.busy) / Math.max(1, b.total - a.total);
    quiet = busy <= maxBusy ? quiet + 1 : 0;
    if (quiet >= 3 || Date.now() >= deadline) break;
    if (!announced && busy > maxBusy) {
      progress(`waiting for the CPU to settle (${(busy * 100).toFixed(0)} % busy)`);
      announced = true;
    }
  }
  return busy;
}

const TICK_MS = 10; // USER_HZ = 100 on Linux

/** utime + stime (+ reaped children's) of a process, in ms. */
export function cpuOf(pid: number): { self: number; sys: number; children: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // fields after the comm: state(0) ... utime(11) stime(12) cutime(13) cstime(14)
  return { self: (Number(f[11]) + Number(f[12])) * TICK_MS, sys: Number(f[12]) * TICK_MS, children: (Number(f[13]) + Number(f[14])) * TICK_MS };
}

/**
 * CPU time of a process, all its threads, in ns (`schedstat`: precise where
 * `cpuOf`'s ticks are 10 ms; null where it cannot be read). Threads that
 * exit meanwhile are not counted.
 */
export function cpuNs(pid: number | null): number | null {
  if (pid === null) return null;
  try {
    let ns = 0;
    for (const task of readdirSync(`/proc/${pid}/task`)) {
      ns += Number(readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'latin1').split(' ')[0]);
    }
    return ns;
  } catch {
    return null;
  }
}

/** Supervisors of the given sandbox ids (their process title names the id). */
export function supervisorPids(ids: string[]): number[] {
  const out: number[] = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const title = readFileSync(`/proc/${d}/cmdline`, 'utf8');
      if (ids.some((id) => title.startsWith(`openshell-supervisor ${id}`))) out.push(Number(d));
    } catch {
      // gone
    }
  }
  return out;
}

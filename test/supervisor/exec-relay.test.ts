import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { WebSocket, WebSocketServer } from 'ws';
import { silentLogger } from '../../src/log.js';
import { decodeOutput, type ExecEv, type ExecStartOp } from '../../src/protocol/exec.js';
import { ExecRegistry } from '../../src/supervisor/exec-registry.js';
import { serveExecRelay } from '../../src/supervisor/exec-relay.js';
import { tempRegistry } from '../helpers/registry.js';

interface Ctx {
  dir: string;
  registry: ExecRegistry;
  port: number;
  wss: WebSocketServer;
}

async function setup(t: Test): Promise<Ctx> {
  const { dir, registry } = await tempRegistry(t, 'openshell-exec-relay-');
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false });
  await once(wss, 'listening');
  t.teardown(async () => {
    for (const c of wss.clients) c.terminate();
    await new Promise((r) => wss.close(r));
  });
  return { dir, registry, wss, port: (wss.address() as AddressInfo).port };
}

/**
 * Opens one relay: the client plays the supervisor (serveExecRelay), the
 * server side plays the gateway and is returned.
 */
async function openRelay(ctx: Ctx): Promise<{ gw: WebSocket; client: WebSocket; done: Promise<void> }> {
  const conn = once(ctx.wss, 'connection');
  const client = new WebSocket(`ws://127.0.0.1:${ctx.port}`, { perMessageDeflate: false, skipUTF8Validation: true });
  // Served before 'open', as the supervisor must: frames right after the upgrade have no other listener.
  const done = serveExecRelay(client, ctx.registry, silentLogger);
  await once(client, 'open');
  const [gw] = (await conn) as [WebSocket];
  return { gw, client, done };
}

interface Collected {
  events: ExecEv[];
  stdout: Buffer;
  stderr: Buffer;
  closeCode: number;
}

/** Collects the gateway side of a relay, checking that offsets are contiguous from `from`. */
function collect(gw: WebSocket, from = { stdout: 0, stderr: 0 }, onText?: (ev: ExecEv) => void, onData?: (s: 'stdout' | 'stderr', b: Buffer) => void): Promise<Collected> {
  const parts = { stdout: [] as Buffer[], stderr: [] as Buffer[] };
  const next = { ...from };
  const events: ExecEv[] = [];
  return new Promise((resolve, reject) => {
    gw.on('message', (data: Buffer, isBinary) => {
      if (!isBinary) {
        const ev = JSON.parse(data.toString()) as ExecEv;
        events.push(ev);
        onText?.(ev);
        return;
      }
      if (events.some((e) => e.ev === 'exit' || e.ev === 'error')) return reject(new Error('output after terminal event'));
      const c = decodeOutput(data);
      if (!c) return reject(new Error('bad output frame'));
      const s = c.stream === 1 ? 'stdout' : 'stderr';
      if (c.offset !== next[s]) return reject(new Error(`${s} offset ${c.offset}, expected ${next[s]}`));
      next[s] += c.data.length;
      parts[s].push(Buffer.from(c.data));
      onData?.(s, c.data);
    });
    gw.once('close', (code) =>
      resolve({ events, stdout: Buffer.concat(parts.stdout), stderr: Buffer.concat(parts.stderr), closeCode: code }),
    );
  });
}

function startOp(command: string[], extra: Partial<ExecStartOp> = {}): ExecStartOp {
  return {
    op: 'start',
    execId: `ex_${randomBytes(6).toString('hex')}`,
    command,
    env: {},
    tty: false,
    timeoutSeconds: 0,
    ...extra,
  };
}

async function run(ctx: Ctx, op: ExecStartOp, stdin?: Buffer): Promise<Collected> {
  const { gw } = await openRelay(ctx);
  const result = collect(gw);
  gw.send(JSON.stringify(op));
  if (stdin) {
    for (let i = 0; i < stdin.length; i += 256 * 1024) gw.send(stdin.subarray(i, i + 256 * 1024));
  }
  gw.send(JSON.stringify({ op: 'closeStdin' }));
  return result;
}

const last = (c: Collected): ExecEv => c.events[c.events.length - 1]!;

/** Gone: no such process, or a zombie nobody reaps (PID 1 here does not reap orphans). */
function isGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

t.test('stdout and stderr are separated and ordered', async (t) => {
  const ctx = await setup(t);
  const c = await run(ctx, startOp(['sh', '-c', 'i=0; while [ $i -lt 300 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done']));
  const want = (p: string): string => Array.from({ length: 300 }, (_, i) => `${p}${i}\n`).join('');
  t.equal(c.stdout.toString(), want('out'));
  t.equal(c.stderr.toString(), want('err'));
  t.equal(c.events[0]!.ev, 'started');
  t.match(last(c), { ev: 'exit', exitCode: 0, signal: null, timedOut: false });
  t.same(c.events.map((e) => e.ev).filter((k) => k !== 'stdinClosed'), ['started', 'exit']);
  t.equal(c.closeCode, 1000);
});

t.test('exit codes and signals', async (t) => {
  const ctx = await setup(t);
  t.match(last(await run(ctx, startOp(['sh', '-c', 'exit 3']))), { ev: 'exit', exitCode: 3, signal: null });
  t.match(last(await run(ctx, startOp(['sh', '-c', 'kill -TERM $$']))), { ev: 'exit', exitCode: null, signal: 'SIGTERM' });
  const e = last(await run(ctx, startOp(['true'])));
  t.ok(e.ev === 'exit' && typeof e.durationMs === 'number' && e.durationMs >= 0);
});

t.test('env and workdir', async (t) => {
  const ctx = await setup(t);
  await mkdir(join(ctx.dir, 'sub'));
  const c = await run(ctx, startOp(['sh', '-c', 'echo "$FOO"; pwd'], { env: { FOO: 'bar baz' }, workdir: 'sub' }));
  t.equal(c.stdout.toString(), `bar baz\n${join(ctx.dir, 'sub')}\n`);
});

t.test('10 MiB of stdin round-trips through cat', async (t) => {
  const ctx = await setup(t);
  const input = randomBytes(10 * 1024 * 1024);
  const c = await run(ctx, startOp(['cat']), input);
  t.equal(c.stdout.length, input.length);
  t.equal(sha(c.stdout), sha(input));
  t.match(last(c), { ev: 'exit', exitCode: 0 });
  // closeStdin is confirmed after every stdin byte reached the registry (what lets a gateway resume).
  const kinds = c.events.map((e) => e.ev);
  t.equal(kinds.filter((k) => k === 'stdinClosed').length, 1, 'one stdinClosed');
  t.ok(kinds.indexOf('stdinClosed') > kinds.indexOf('started'), 'after started');
});

t.test('binary output is intact', async (t) => {
  const ctx = await setup(t);
  const file = join(ctx.dir, 'rand.bin');
  const c = await run(ctx, startOp(['sh', '-c', `head -c 1048576 /dev/urandom | tee ${file}`]));
  const want = await readFile(file);
  t.equal(want.length, 1048576);
  t.equal(sha(c.stdout), sha(want));
});

t.test('spawn failures and bad frames', async (t) => {
  const ctx = await setup(t);
  const c1 = await run(ctx, startOp(['definitely-not-a-command-xyz']));
  t.match(c1.events, [{ ev: 'error', code: 'SPAWN_FAILED' }]);
  t.equal(c1.closeCode, 1000);

  const r2 = await openRelay(ctx);
  const c2 = collect(r2.gw);
  r2.gw.send('not json');
  t.match((await c2).events, [{ ev: 'error', code: 'INVALID_ARGUMENT' }]);

  const r3 = await openRelay(ctx);
  const c3 = collect(r3.gw);
  r3.gw.send(JSON.stringify({ op: 'attach', execId: 'ex_nope', offsets: { stdout: 0, stderr: 0 } }));
  const got3 = await c3;
  t.match(got3.events, [{ ev: 'error', code: 'EXEC_NOT_FOUND' }]);
  t.equal(got3.closeCode, 1000);

  const c4 = await run(ctx, startOp(['true'], { workdir: join(ctx.dir, 'missing') }));
  t.match(c4.events, [{ ev: 'error', code: 'SPAWN_FAILED' }]);
});

t.test('timeout kills the whole process group and exits 124', async (t) => {
  const ctx = await setup(t);
  const { gw } = await openRelay(ctx);
  let pid = 0;
  const c = collect(gw, undefined, (ev) => {
    if (ev.ev === 'started') pid = ev.pid;
  });
  gw.send(JSON.stringify(startOp(['sh', '-c', 'sleep 100 & echo $!; sleep 100'], { timeoutSeconds: 1 })));
  const got = await c;
  t.match(last(got), { ev: 'exit', exitCode: 124, timedOut: true });
  const grandchild = Number(got.stdout.toString().trim());
  t.ok(pid > 0 && grandchild > 0);
  await waitFor(() => isGone(pid) && isGone(grandchild));
  t.pass('leader and grandchild are gone');
});

t.test('explicit SIGKILL op kills the group', async (t) => {
  const ctx = await setup(t);
  const { gw } = await openRelay(ctx);
  let pid = 0;
  const c = collect(
    gw,
    undefined,
    (ev) => {
      if (ev.ev === 'started') pid = ev.pid;
    },
    () => gw.send(JSON.stringify({ op: 'signal', signal: 'SIGKILL' })),
  );
  gw.send(JSON.stringify(startOp(['sh', '-c', 'sleep 100 & echo $!; wait'])));
  const got = await c;
  t.match(last(got), { ev: 'exit', exitCode: null, signal: 'SIGKILL', timedOut: false });
  const grandchild = Number(got.stdout.toString().trim());
  await waitFor(() => isGone(pid) && isGone(grandchild));
  t.pass('group is gone');
});

t.test('a lost relay leaves the process running; attach resumes from offsets', async (t) => {
  const ctx = await setup(t);
  const go1 = join(ctx.dir, 'go1');
  const go2 = join(ctx.dir, 'go2');
  const script = `echo one; echo e1 >&2; while [ ! -f ${go1} ]; do sleep 0.02; done; echo two; echo e2 >&2; while [ ! -f ${go2} ]; do sleep 0.02; done; echo three; exit 7`;
  const op = startOp(['sh', '-c', script]);
  const r1 = await openRelay(ctx);
  let pid = 0;
  let seen = '';
  const firstLines = new Promise<void>((resolve) => {
    void collect(
      r1.gw,
      undefined,
      (ev) => {
        if (ev.ev === 'started') pid = ev.pid;
      },
      (s, b) => {
        if (s === 'stdout') seen += b.toString();
        if (seen === 'one\n') resolve();
      },
    );
  });
  r1.gw.send(JSON.stringify(op));
  await firstLines;
  const handle = ctx.registry.get(op.execId)!;
  await waitFor(() => handle.offsets.stderr === 3);
  // The gateway side drops the relay abruptly.
  r1.gw.terminate();
  await r1.done;
  t.notOk(isGone(pid), 'process still running after the relay was lost');
  t.equal(handle.state, 'running');

  await writeFile(go1, '');
  const r2 = await openRelay(ctx);
  const from = { stdout: 4, stderr: 0 };
  const c2 = collect(r2.gw, from, undefined, (s, b) => {
    if (s === 'stdout' && b.toString().includes('two')) void writeFile(go2, '');
  });
  r2.gw.send(JSON.stringify({ op: 'attach', execId: op.execId, offsets: from }));
  const got = await c2;
  t.equal(got.stdout.toString(), 'two\nthree\n');
  t.equal(got.stderr.toString(), 'e1\ne2\n');
  t.match(got.events[0], { ev: 'started', execId: op.execId, pid });
  t.match(last(got), { ev: 'exit', exitCode: 7 });

  // A finished exec replays from the spool too.
  const r3 = await openRelay(ctx);
  const c3 = collect(r3.gw, { stdout: 8, stderr: 3 });
  r3.gw.send(JSON.stringify({ op: 'attach', execId: op.execId, offsets: { stdout: 8, stderr: 3 } }));
  const got3 = await c3;
  t.equal(got3.stdout.toString(), 'three\n');
  t.equal(got3.stderr.toString(), 'e2\n');
  t.match(last(got3), { ev: 'exit', exitCode: 7 });
});

t.test('tty exec with resize', async (t) => {
  const ctx = await setup(t);
  const { gw } = await openRelay(ctx);
  let out = '';
  let resized = false;
  const c = collect(gw, undefined, undefined, (_s, b) => {
    out += b.toString();
    if (!resized && out.includes('42')) {
      resized = true;
      gw.send(JSON.stringify({ op: 'resize', cols: 100, rows: 30 }));
      gw.send(Buffer.from('go\n'));
    }
  });
  gw.send(JSON.stringify(startOp(['sh', '-c', 'echo $((6*7)); read x; stty size'], { tty: true, cols: 80, rows: 24 })));
  const got = await c;
  t.match(got.stdout.toString(), /42\r\n/);
  t.match(got.stdout.toString(), /30 100/);
  t.equal(got.stderr.length, 0);
  t.match(last(got), { ev: 'exit', exitCode: 0 });
});

t.test('bulk stdout throughput through the relay', async (t) => {
  const ctx = await setup(t);
  const size = 512 * 1024 * 1024;
  const { gw } = await openRelay(ctx);
  let bytes = 0;
  const t0 = performance.now();
  const done = new Promise<ExecEv>((resolve) => {
    gw.on('message', (data: Buffer, isBinary) => {
      if (isBinary) bytes += data.length - 9;
      else {
        const ev = JSON.parse(data.toString()) as ExecEv;
        if (ev.ev === 'exit' || ev.ev === 'error') resolve(ev);
      }
    });
  });
  gw.send(JSON.stringify(startOp(['head', '-c', String(size), '/dev/zero'])));
  gw.send(JSON.stringify({ op: 'closeStdin' }));
  t.match(await done, { ev: 'exit', exitCode: 0 });
  const secs = (performance.now() - t0) / 1000;
  t.equal(bytes, size);
  t.comment(`relay stdout: ${(size / secs / 1e6).toFixed(0)} MB/s`);
});

t.test('relay reuse: keep, frames before release dropped, next exec on the same relay', async (t) => {
  const ctx = await setup(t);
  const { gw } = await openRelay(ctx);
  const texts: ExecEv[] = [];
  const out: Buffer[] = [];
  let closed = false;
  gw.on('close', () => (closed = true));
  gw.on('message', (data: Buffer, isBinary) => {
    if (isBinary) out.push(Buffer.from(decodeOutput(data)!.data));
    else texts.push(JSON.parse(data.toString()) as ExecEv);
  });
  const terminal = (n: number): Promise<void> => waitFor(() => texts.filter((e) => e.ev === 'exit' || e.ev === 'error').length >= n);

  // 1: closeStdin on start: cat sees EOF at once.
  gw.send(JSON.stringify(startOp(['cat'], { keep: true, closeStdin: true })));
  await terminal(1);
  t.match(texts.at(-1), { ev: 'exit', exitCode: 0 }, 'cat ended on the closed stdin');
  // Stdin and an op still in flight for the finished exec, then release.
  gw.send(Buffer.from('stale stdin\n'));
  gw.send(JSON.stringify({ op: 'signal', signal: 'SIGKILL' }));
  gw.send(JSON.stringify({ op: 'release' }));

  // 2: the same relay serves another exec; the stale frames reached nobody.
  const second = startOp(['sh', '-c', 'cat; echo done'], { keep: true });
  gw.send(JSON.stringify(second));
  gw.send(Buffer.from('fresh\n'));
  gw.send(JSON.stringify({ op: 'closeStdin' }));
  await terminal(2);
  t.match(texts.at(-1), { ev: 'exit', exitCode: 0 });
  t.equal(Buffer.concat(out).toString(), 'fresh\ndone\n', 'only the second exec\'s stdin arrived');
  t.same(
    texts.filter((e) => e.ev === 'started').map((e) => (e as { execId: string }).execId).at(-1),
    second.execId,
  );
  t.notOk(closed, 'the relay stayed open after both execs');

  // 3: a spawn failure keeps the relay too; an exec without keep closes it as before.
  gw.send(JSON.stringify({ op: 'release' }));
  gw.send(JSON.stringify(startOp(['/nonexistent/program'], { keep: true })));
  await terminal(3);
  t.match(texts.at(-1), { ev: 'error', code: 'SPAWN_FAILED' });
  gw.send(JSON.stringify({ op: 'release' }));
  gw.send(JSON.stringify(startOp(['true'], { closeStdin: true })));
  await terminal(4);
  await waitFor(() => closed);
  t.pass('without keep the relay closes after the terminal event');
});

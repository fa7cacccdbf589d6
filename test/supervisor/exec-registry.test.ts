import { createHash } from 'node:crypto';
import { readdirSync, readlinkSync } from 'node:fs';
import { readdir, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { STREAM_STDERR, STREAM_STDOUT, type ExecStartOp, type OutputStream } from '../../src/protocol/exec.js';
import { ExecError, ExecRegistry, type ExecResult } from '../../src/supervisor/exec-registry.js';
import { isRoot } from '../../src/supervisor/users.js';
import { tempRegistry, type TempRegistry } from '../helpers/registry.js';

async function setup(t: Test, opts: { finishedRetentionMs?: number } = {}): Promise<TempRegistry> {
  return tempRegistry(t, 'openshell-exec-registry-', { env: { BASE: 'base' }, ...opts });
}

let n = 0;
const op = (command: string[], extra: Partial<ExecStartOp> = {}): ExecStartOp => ({
  op: 'start',
  execId: `ex_test${n++}`,
  command,
  env: {},
  tty: false,
  timeoutSeconds: 0,
  ...extra,
});

/** Subscribes from offsets and gathers everything up to exit. */
function drain(h: ReturnType<ExecRegistry['start']>, from = { stdout: 0, stderr: 0 }): Promise<{ stdout: string; stderr: string; result: ExecResult }> {
  const out: Record<OutputStream, Buffer[]> = { [STREAM_STDOUT]: [], [STREAM_STDERR]: [] };
  return new Promise((resolve, reject) => {
    h.subscribe(from, {
      output: (s, _o, d) => out[s].push(Buffer.from(d)),
      exit: (result) =>
        resolve({ stdout: Buffer.concat(out[STREAM_STDOUT]).toString(), stderr: Buffer.concat(out[STREAM_STDERR]).toString(), result }),
      error: reject,
    });
  });
}

const spoolFds = (spoolDir: string): number =>
  readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`).startsWith(spoolDir);
    } catch {
      return false;
    }
  }).length;

t.test('env merges baseEnv and op.env; info and list', async (t) => {
  const { registry } = await setup(t);
  const h = registry.start(op(['sh', '-c', 'echo "$BASE $X"'], { env: { X: 'x' } }));
  const got = await drain(h);
  t.equal(got.stdout, 'base x\n');
  t.match(h.info(), { state: 'exited', exitCode: 0, stdoutBytes: 7, stderrBytes: 0, timedOut: false });
  t.equal(registry.get(h.execId), h);
  t.ok(registry.list().includes(h));
  t.throws(() => registry.start(op(['true'], { execId: h.execId })), ExecError);
  t.throws(() => registry.start(op([])), { code: 'INVALID_ARGUMENT' });
  t.throws(() => registry.start(op(['true'], { execId: '../etc' })), { code: 'INVALID_ARGUMENT' });
});

t.test('replay from any offset after exit, from the spool file', async (t) => {
  const { registry } = await setup(t);
  const h = registry.start(op(['sh', '-c', 'seq 1 20000; echo done >&2']));
  const full = await drain(h);
  t.equal(full.stdout.split('\n').length, 20001);
  const tail = await drain(h, { stdout: 100, stderr: 2 });
  t.equal(tail.stdout, full.stdout.slice(100));
  t.equal(tail.stderr, 'ne\n');
  t.equal((await h.read(STREAM_STDOUT, 6, 4)).toString(), '4\n5\n');
  t.throws(() => h.subscribe({ stdout: 10 ** 9, stderr: 0 }, { output() {}, exit() {}, error() {} }), { code: 'INVALID_ARGUMENT' });
});

t.test('quiet execs hold no spool files or descriptors', async (t) => {
  const { registry, spoolDir } = await setup(t);
  const handles = Array.from({ length: 200 }, () => registry.start(op(['sleep', '100'])));
  t.equal(spoolFds(spoolDir), 0);
  t.same(await readdir(spoolDir), []);
  const noisy = registry.start(op(['sh', '-c', 'echo hi; exec sleep 100']));
  let resolveOut: () => void;
  const out = new Promise<void>((r) => (resolveOut = r));
  noisy.subscribe({ stdout: 0, stderr: 0 }, { output: () => resolveOut(), exit() {}, error() {} });
  await out;
  // The live path does not wait for the file; it appears once the spool catches up.
  const deadline = Date.now() + 5000;
  while ((await readdir(spoolDir)).length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  t.same(await readdir(spoolDir), [`${noisy.execId}.stdout`]);
  for (const h of [...handles, noisy]) h.signal('SIGKILL');
  await Promise.all([...handles, noisy].map((h) => h.wait()));
  // The spool closes its file asynchronously, after its last write lands.
  const closeBy = Date.now() + 5000;
  while (spoolFds(spoolDir) > 0 && Date.now() < closeBy) await new Promise((r) => setTimeout(r, 10));
  t.equal(spoolFds(spoolDir), 0, 'descriptors closed once finished');
});

t.test('finished execs expire with their spool files', async (t) => {
  // Long enough that the spool is still there when first listed on a loaded machine (50 ms lost that race once in CI).
  const { registry, spoolDir } = await setup(t, { finishedRetentionMs: 1000 });
  const h = registry.start(op(['echo', 'bye']));
  await h.wait();
  t.same(await readdir(spoolDir), [`${h.execId}.stdout`]);
  const deadline = Date.now() + 5000;
  while (registry.get(h.execId) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  t.equal(registry.get(h.execId), undefined);
  while ((await readdir(spoolDir)).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  t.same(await readdir(spoolDir), []);
});

t.test('a paused reader pauses the child; resuming delivers everything', async (t) => {
  const { registry } = await setup(t);
  const size = 64 * 1024 * 1024;
  const h = registry.start(op(['head', '-c', String(size), '/dev/zero']));
  let bytes = 0;
  let pausedOnce = false;
  let first: () => void;
  const gotFirst = new Promise<void>((r) => (first = r));
  const done = new Promise<ExecResult>((resolve, reject) => {
    const sub = h.subscribe(
      { stdout: 0, stderr: 0 },
      {
        output: (_s, _o, d) => {
          bytes += d.length;
          if (!pausedOnce) {
            pausedOnce = true;
            sub.pause();
            first();
          }
        },
        exit: resolve,
        error: reject,
      },
    );
    void gotFirst.then(async () => {
      // While paused the process cannot run ahead far: its stdout is paused (pipe + one read).
      await new Promise((r) => setImmediate(r));
      t.ok(h.offsets.stdout < size, 'child is held back while the only reader is paused');
      t.equal(h.state, 'running');
      sub.resume();
    });
  });
  t.match(await done, { exitCode: 0 });
  t.equal(bytes, size);
});

t.test('spawn failures are reported synchronously', async (t) => {
  const { registry, dir } = await setup(t);
  t.throws(() => registry.start(op(['no-such-program-xyz'])), { code: 'SPAWN_FAILED' });
  t.throws(() => registry.start(op(['true'], { workdir: join(dir, 'nope') })), { code: 'SPAWN_FAILED' });
  t.throws(() => registry.start(op(['no-such-program-xyz'], { tty: true })), { code: 'SPAWN_FAILED' });
});

t.test('user: resolved from /etc/passwd when root', { skip: !isRoot() && 'not root' }, async (t) => {
  const { registry } = await setup(t);
  const got = await drain(registry.start(op(['sh', '-c', 'id -u; echo $HOME $USER'], { user: 'nobody', workdir: '/' })));
  t.match(got.stdout, /^65534\n/);
  t.match(got.stdout, / nobody\n$/);
  t.throws(() => registry.start(op(['true'], { user: 'no-such-user-xyz' })), { code: 'INVALID_ARGUMENT' });
});

t.test('close kills running groups', async (t) => {
  const { registry } = await setup(t);
  const h = registry.start(op(['sleep', '100']));
  const exited = h.wait();
  await registry.close();
  t.match(await exited, { signal: 'SIGKILL' });
  t.throws(() => process.kill(h.pid, 0));
});

t.test('a spool file that cannot be written: memory stays bounded and no reader loses a byte', async (t) => {
  const limit = 2 * 1024 * 1024;
  const { registry, spoolDir } = await setup(t);
  const reg = new ExecRegistry({
    log: registry.log,
    spoolDir,
    baseEnv: () => ({ PATH: process.env.PATH ?? '/usr/bin:/bin' }),
    defaultCwd: spoolDir,
    spoolFailedMemoryBytes: limit,
  });
  t.teardown(() => reg.close());
  const start = op(['seq', '1', '3000000']);
  await symlink('/dev/full', join(spoolDir, `${start.execId}.stdout`)); // every write: ENOSPC
  const expected = createHash('sha256');
  for (let i = 1; i <= 3_000_000; i++) expected.update(`${i}\n`);
  const h = reg.start(start);
  // Two readers: one always keeps up; the other pauses. With a working spool
  // the slow one would catch up from the file; here it must hold the child back.
  const positions: (() => number)[] = [];
  /** Memory beyond what the window, or a reader that still needs older bytes, justifies. */
  let maxExcess = Number.NEGATIVE_INFINITY;
  const reader = (pausing: boolean) => {
    const hash = createHash('sha256');
    let maxLag = 0;
    /** How far the child ran past the window, or past the lag it already had, while the reader was paused. */
    let maxLagGrowth = Number.NEGATIVE_INFINITY;
    let measured = 0;
    let got = 0;
    positions.push(() => got);
    const done = new Promise<ExecResult>((resolve, reject) => {
      let nextPause = 4 * 1024 * 1024;
      const sub = h.subscribe(
        { stdout: 0, stderr: 0 },
        {
          output: (_s, offset, d) => {
            hash.update(d);
            got = offset + d.length;
            // After the failure, memory holds the window, or more only while a reader still needs it.
            // (Before the first write fails, unwritten bytes are bounded by the spool's high-water mark.)
            const sp = h.spool(0);
            if (sp.failed) {
              const needed = Math.max(limit, sp.end - Math.min(...positions.map((p) => p())));
              maxExcess = Math.max(maxExcess, sp.memoryBytes - needed);
            }
            if (pausing && got >= nextPause) {
              nextPause += 4 * 1024 * 1024;
              sub.pause();
              // Before the failure is known the spool works and the child may run ahead freely.
              const afterFailure = h.spool(0).failed;
              // (It may have, then: a lag from before the failure can only shrink.)
              const lagAtPause = h.offsets.stdout - got;
              // Give the child time to run ahead if nothing held it back.
              setTimeout(() => {
                if (afterFailure) {
                  measured++;
                  const lag = h.offsets.stdout - got;
                  maxLag = Math.max(maxLag, lag);
                  maxLagGrowth = Math.max(maxLagGrowth, lag - Math.max(lagAtPause, limit));
                }
                sub.resume();
              }, 100);
            }
          },
          exit: resolve,
          error: reject,
        },
      );
    });
    return { done, hash, maxLag: () => maxLag, maxLagGrowth: () => maxLagGrowth, measured: () => measured };
  };
  const fast = reader(false);
  const slow = reader(true);
  t.match(await fast.done, { exitCode: 0 });
  t.match(await slow.done, { exitCode: 0 });
  const want = expected.digest('hex');
  t.equal(fast.hash.digest('hex'), want, 'the reader that kept up got every byte');
  t.equal(slow.hash.digest('hex'), want, 'the reader that paused got every byte');
  t.ok(h.spool(0).failed, 'the spool did fail');
  const maxLag = slow.maxLag();
  t.ok(slow.measured() > 0, 'the slow reader paused after the failure was known');
  t.ok(
    maxLag > 0 && slow.maxLagGrowth() <= 0,
    `the child ran at most the memory window ahead of the paused reader (largest lag ${maxLag} bytes, window ${limit})`,
  );
  // Trimming happens on the next append: a reader that just took a replay chunk (1 MiB) frees it a moment later.
  t.ok(
    maxExcess > -limit && maxExcess <= 1024 * 1024 + 256 * 1024,
    `after the failure, memory held the window or what a reader still needed (excess ${maxExcess} bytes)`,
  );
  t.ok(h.spool(0).memoryBytes <= limit + 256 * 1024, `and at the end just the window (${h.spool(0).memoryBytes} bytes)`);
  await t.rejects(h.read(STREAM_STDOUT, 0), /were dropped/, 'replay of dropped bytes says so');
});

t.test('a finished exec drops its process objects; stdin, resize and signals after the end are harmless', async (t) => {
  const { registry } = await setup(t);
  for (const tty of [false, true]) {
    const h = registry.start(op(['sh', '-c', 'echo done'], { tty }));
    const got = await drain(h);
    t.match(got.result, { exitCode: 0 }, `tty ${tty}`);
    t.equal(h.writeStdin(Buffer.from('late\n')), true, 'stdin after the end is dropped');
    await new Promise<void>((resolve) => h.onceStdinDrain(resolve));
    h.closeStdin();
    h.resize(100, 40);
    t.equal(h.signal('TERM'), false, 'no process group left to signal');
    t.match(h.info(), { state: 'exited', exitCode: 0 });
    // Still replayable from its spool.
    t.match((await drain(h)).stdout, /done/);
  }
});

import { createHash } from 'node:crypto';
import t from 'tap';
import type { ExecEvent } from '../../src/schemas/sandbox.js';
import { execStream, goneInSandbox, type ExecOutcome } from '../helpers/exec.js';
import { api, proxySupervisors, startGateway, waitForPhase, type Teardown } from '../helpers/gateway.js';

/** Keepalive 500/1500 ms: a black-holed relay is declared dead about 1.5 s after the hole opens. */
const FAST = { keepaliveIntervalMs: 500, keepaliveTimeoutMs: 1500 };

/** A gateway (keepalive 500/1500 ms, the given resume window) whose supervisors dial it through a fault proxy, and a Ready sandbox. */
async function behindFaultProxy(t: Teardown, name: string, resumeWindowMs = 15_000) {
  const gw = await startGateway(t, { ...FAST, execResumeWindowMs: resumeWindowMs });
  const proxy = await proxySupervisors(t, gw);
  await api(gw.url, 'POST', '/v1/sandboxes', { name });
  await waitForPhase(gw.app, name, 'Ready');
  return { gw, proxy };
}

/** A command that prints `line1`…`lineN`, one every 100 ms, then exits with `code`. */
const counter = (n: number, code: number) => ['sh', '-c', `i=0; while [ $i -lt ${n} ]; do i=$((i+1)); echo line$i; sleep 0.1; done; exit ${code}`];
const lines = (n: number) => Array.from({ length: n }, (_, i) => `line${i + 1}\n`).join('');

/** Starts an exec and calls `onFirst` once its first output arrives. */
function watch(url: string, name: string, command: string[], onFirst: () => void, signal?: AbortSignal) {
  let first = true;
  let endedAt = 0;
  const done = execStream(url, name, { command }, {
    signal,
    onEvent: (e: ExecEvent) => {
      if (e.type === 'stdout' && first) {
        first = false;
        onFirst();
      }
    },
  }).then((r: ExecOutcome) => {
    endedAt = Date.now();
    return r;
  });
  return { done, endedAt: () => endedAt };
}

t.test('a relay black-holed mid-exec is re-attached: the stream continues to the real exit, every byte once', async (t) => {
  const { gw, proxy } = await behindFaultProxy(t, 'nat');
  const N = 40;
  const exec = watch(gw.url, 'nat', counter(N, 3), () => {
    proxy.blackhole();
    // The transport comes back after both ends have given the old connections up.
    setTimeout(() => proxy.restore(), 2500).unref();
  });
  const r = await exec.done;
  t.match(r.last, { type: 'exit', exitCode: 3 }, 'the real exit, not RELAY_LOST');
  t.equal(r.stdout.toString(), lines(N), 'every line, in order, none twice');
  let next = 0;
  for (const e of r.events) {
    if (e.type !== 'stdout') continue;
    t.equal(e.offset, next, `offset ${e.offset} follows on`);
    next += Buffer.from(e.data, 'base64').length;
  }
  t.equal(r.events.filter((e) => e.type === 'started').length, 1, 'one started event');
  const fresh = await execStream(gw.url, 'nat', { command: ['echo', 'after'] });
  t.equal(fresh.stdout.toString(), 'after\n');
  const metrics = await (await fetch(`${gw.url}/metrics`)).text();
  t.match(metrics, /^openshell_exec_resumes_total 1$/m, 'the resume is counted');
});

t.test('an exec that finished during the outage: its remaining output and exit are replayed', async (t) => {
  const { gw, proxy } = await behindFaultProxy(t, 'done');
  // 1 s of output: it is over long before the relay comes back.
  const exec = watch(gw.url, 'done', counter(10, 0), () => {
    proxy.blackhole();
    setTimeout(() => proxy.restore(), 2500).unref();
  });
  const r = await exec.done;
  t.match(r.last, { type: 'exit', exitCode: 0 });
  t.equal(r.stdout.toString(), lines(10));
});

t.test('no way back within the window: RELAY_LOST after timeout + window, naming the window', async (t) => {
  const WINDOW = 2000;
  const { gw, proxy } = await behindFaultProxy(t, 'gone', WINDOW);
  let holedAt = 0;
  const exec = watch(gw.url, 'gone', ['sh', '-c', 'echo go; sleep 30'], () => {
    holedAt = Date.now();
    proxy.blackhole();
  });
  const r = await exec.done;
  const ms = exec.endedAt() - holedAt;
  t.match(r.last, { type: 'error', code: 'RELAY_LOST', message: /2000 ms resume window/ });
  t.ok(ms >= WINDOW, `not before the window (${ms} ms)`);
  t.ok(ms <= FAST.keepaliveTimeoutMs + WINDOW + 3000, `ended ${ms} ms after the hole opened`);
});

t.test('a caller that leaves during the outage: the process group is killed once the sandbox is back', async (t) => {
  const { gw, proxy } = await behindFaultProxy(t, 'left');
  const abort = new AbortController();
  let pid = 0;
  const done = execStream(gw.url, 'left', { command: ['sh', '-c', 'echo $$; exec sleep 60'] }, {
    signal: abort.signal,
    onEvent: (e) => {
      if (e.type === 'stdout' && !pid) {
        pid = Number(Buffer.from(e.data, 'base64').toString().trim());
        proxy.blackhole();
        // Leave while the gateway waits for the sandbox, then let the sandbox back.
        setTimeout(() => abort.abort(), 2200).unref();
        setTimeout(() => proxy.restore(), 3000).unref();
      }
    },
  }).catch((err: Error) => err);
  await done;
  t.ok(pid > 0, `the command ran as ${pid}`);
  t.ok(await goneInSandbox(gw.url, 'left', [pid], 15_000), 'the process group was killed after the caller left');
});

t.test('an exec given stdin resumes once the supervisor confirmed all of it; the process read every byte', async (t) => {
  const { gw, proxy } = await behindFaultProxy(t, 'input');
  const stdin = Buffer.alloc(1024 * 1024, 0x61);
  let first = true;
  const r = await execStream(gw.url, 'input', {
    command: ['sh', '-c', `wc -c; ${counter(20, 4)[2]}`],
    stdin: stdin.toString('base64'),
  }, {
    onEvent: (e: ExecEvent) => {
      if (e.type === 'stdout' && first) {
        first = false;
        proxy.blackhole();
        setTimeout(() => proxy.restore(), 2500).unref();
      }
    },
  });
  t.match(r.last, { type: 'exit', exitCode: 4 }, 'the real exit, not RELAY_LOST');
  t.equal(r.stdout.toString(), `${stdin.length}\n${lines(20)}`);
});

t.test('binary output across an outage: byte-identical after the re-attach', async (t) => {
  const { gw, proxy } = await behindFaultProxy(t, 'bin');
  // 16 MiB of random bytes, 1 MiB every 100 ms; the file's sha256 on stderr at the end.
  const script =
    'f=$(mktemp); head -c 16777216 /dev/urandom > "$f"; ' +
    'for i in $(seq 0 15); do dd if="$f" bs=1048576 skip=$i count=1 2>/dev/null; sleep 0.1; done; ' +
    'sha256sum "$f" | cut -d" " -f1 >&2; rm -f "$f"';
  let first = true;
  const r = await execStream(gw.url, 'bin', { command: ['sh', '-c', script] }, {
    onEvent: (e: ExecEvent) => {
      if (e.type === 'stdout' && first) {
        first = false;
        proxy.blackhole();
        setTimeout(() => proxy.restore(), 2500).unref();
      }
    },
  });
  t.match(r.last, { type: 'exit', exitCode: 0 });
  t.equal(r.stdout.length, 16 * 1024 * 1024, 'every byte');
  t.equal(createHash('sha256').update(r.stdout).digest('hex'), r.stderr.toString().trim(), 'the same bytes, in order');
});

t.test('40 execs in one sandbox resume together (more than the 32 relay opens a sandbox may have pending)', async (t) => {
  const { gw, proxy } = await behindFaultProxy(t, 'many');
  const N = 40;
  let started = 0;
  let allStarted!: () => void;
  const ready = new Promise<void>((r) => (allStarted = r));
  const execs: Promise<ExecOutcome>[] = [];
  // Started in two batches: 40 opens at once would themselves pass the pending cap (429).
  for (const batch of [N / 2, N]) {
    while (execs.length < batch) {
      execs.push(
        execStream(gw.url, 'many', { command: ['sh', '-c', 'echo go; sleep 6; echo done'] }, {
          onEvent: (e: ExecEvent) => {
            if (e.type === 'stdout' && ++started === N) allStarted();
          },
        }),
      );
    }
    while (started < batch) await new Promise((r) => setTimeout(r, 20));
  }
  await ready;
  proxy.blackhole();
  setTimeout(() => proxy.restore(), 2500).unref();
  const results = await Promise.all(execs);
  t.equal(results.filter((r) => r.last?.type === 'exit' && r.last.exitCode === 0).length, N, 'every exec reached its real exit');
  t.equal(results.filter((r) => r.stdout.toString() === 'go\ndone\n').length, N, 'with all of its output');
});

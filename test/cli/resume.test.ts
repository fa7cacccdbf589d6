import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { freePort } from '../../bench/ports.js';
import type { ExecInfo, Sandbox, SandboxList } from '../../src/schemas/sandbox.js';
import { execStream } from '../helpers/exec.js';
import { killHard, spawnGateway } from '../helpers/gateway-process.js';
import { api, tempDir, type Teardown } from '../helpers/gateway.js';
import { supervisorsOf } from '../helpers/sandbox.js';

t.setTimeout(180_000);
const bin = fileURLToPath(new URL('../../bin/openshell.js', import.meta.url));

async function untilReady(url: string, name: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { body } = await api<SandboxList>(url, 'GET', '/v1/sandboxes');
    if (body.sandboxes.some((s) => s.name === name && s.phase === 'Ready')) return;
    if (Date.now() > deadline) throw new Error(`${name} not Ready after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A real gateway process on a fixed port and state dir (so it can be killed and started again), and a Ready sandbox. */
async function restartable(t: Teardown, name: string) {
  const stateDir = tempDir(t);
  const port = await freePort();
  const args = ['--port', String(port), '--state-dir', stateDir, '--keepalive-interval-ms', '500', '--keepalive-timeout-ms', '1500'];
  const first = await spawnGateway(t, args);
  const { body } = await api<Sandbox>(first.url, 'POST', '/v1/sandboxes', { name });
  t.teardown(() => {
    for (const pid of supervisorsOf(body.id)) process.kill(-pid, 'SIGKILL');
  });
  await untilReady(first.url, name);
  return { first, url: first.url, restart: () => spawnGateway(t, args) };
}

/** `openshell sandbox exec …` as its own process; resolves when it exits. */
function cliExec(t: Teardown, url: string, args: string[], stdin?: string) {
  const child = spawn(process.execPath, [bin, 'sandbox', 'exec', ...args], {
    env: { ...process.env, OPENSHELL_GATEWAY: url },
    stdio: [stdin === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  });
  t.teardown(() => child.kill('SIGKILL'));
  if (stdin !== undefined) child.stdin!.end(stdin);
  let stdout = '';
  let stderr = '';
  const waiters: Array<[string, () => void]> = [];
  child.stdout!.on('data', (d: Buffer) => {
    stdout += d.toString();
    for (const w of waiters.splice(0)) {
      if (stdout.includes(w[0])) w[1]();
      else waiters.push(w);
    }
  });
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = once(child, 'exit').then(([code]) => ({ code: code as number, stdout, stderr }));
  /** Resolves once stdout contains `text`. */
  const seen = (text: string) =>
    new Promise<void>((resolve) => {
      if (stdout.includes(text)) resolve();
      else waiters.push([text, resolve]);
    });
  return { child, exited, seen };
}

const N = 60;
const counter = `i=0; while [ $i -lt ${N} ]; do i=$((i+1)); echo line$i; sleep 0.05; done; exit 7`;
const lines = Array.from({ length: N }, (_, i) => `line${i + 1}\n`).join('');

t.test('sandbox exec survives kill -9 of the gateway mid-output and its restart: every line once, the real exit code', async (t) => {
  const gw = await restartable(t, 'survive');
  // Both transports: no stdin (binary WebSocket) and settled stdin (NDJSON, stdin in the body).
  const binary = cliExec(t, gw.url, ['survive', '--', 'sh', '-c', counter]);
  const ndjson = cliExec(t, gw.url, ['survive', '--', 'sh', '-c', `read x; echo "got $x"; ${counter}`], 'hello\n');
  await Promise.all([binary.seen('line5\n'), ndjson.seen('line5\n')]);
  await killHard(gw.first.child);
  await gw.restart();
  const [b, n] = await Promise.all([binary.exited, ndjson.exited]);
  t.equal(b.stdout, lines, `binary: every line once (${b.stderr})`);
  t.equal(b.code, 7, 'binary: the command’s exit code');
  t.equal(n.stdout, `got hello\n${lines}`, `ndjson: every line once (${n.stderr})`);
  t.equal(n.code, 7, 'ndjson: the command’s exit code');
  t.equal(b.stderr + n.stderr, '', 'nothing on stderr');
});

t.test('a requestId still attaches across a gateway restart (the supervisor owns the record)', async (t) => {
  const gw = await restartable(t, 'idem');
  const command = ['sh', '-c', 'echo run >> runs.txt; echo started; sleep 1; echo finished; exit 3'];
  const first = await api<{ execId: string }>(gw.url, 'POST', '/v1/sandboxes/idem/exec', { command, requestId: 'across-restart', detach: true });
  t.equal(first.status, 202);
  await killHard(gw.first.child);
  const second = await gw.restart();
  await untilReady(second.url, 'idem');
  const again = await execStream(second.url, 'idem', { command, requestId: 'across-restart' });
  t.equal((again.events[0] as { execId: string }).execId, first.body.execId, 'the same exec');
  t.equal(again.stdout.toString(), 'started\nfinished\n', 'replayed from 0, then live');
  t.match(again.last, { type: 'exit', exitCode: 3 });
  const runs = await execStream(second.url, 'idem', { command: ['cat', 'runs.txt'] });
  t.equal(runs.stdout.toString(), 'run\n', 'one process');
  const info = await api<ExecInfo>(second.url, 'GET', `/v1/sandboxes/idem/execs/${first.body.execId}`);
  t.match(info.body, { state: 'exited', exitCode: 3, requestId: 'across-restart' });
});

t.test('with the gateway gone for good: a clear message and a non-zero code after the retry budget', async (t) => {
  const gw = await restartable(t, 'gone');
  const run = cliExec(t, gw.url, ['gone', '--resume-timeout', '2', '--', 'sh', '-c', counter]);
  await run.seen('line3\n');
  const killedAt = Date.now();
  await killHard(gw.first.child);
  const r = await run.exited;
  const ms = Date.now() - killedAt;
  t.equal(r.code, 1, 'non-zero');
  t.match(r.stderr, /^openshell: cannot reach the gateway at http:\/\/127\.0\.0\.1:\d+: .*gave up re-attaching to the exec after 2 s \(it may still be running in the sandbox\)\n$/);
  t.ok(ms >= 2000 && ms < 8000, `gave up ${ms} ms after the gateway died`);
  t.match(r.stdout, /^line1\nline2\nline3\n/, 'what arrived was printed once');
});

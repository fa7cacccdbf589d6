import { createHash } from 'node:crypto';
import t from 'tap';
import type { ExecEvent, ExecInfo, ExecList } from '../../src/schemas/sandbox.js';
import { execStream, ndjson, type ExecOutcome } from '../helpers/exec.js';
import { alive, api, startGateway, waitForPhase } from '../helpers/gateway.js';

t.setTimeout(120_000);
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** `GET …/execs/:id/output` read to its end. */
async function output(base: string, name: string, execId: string, query = ''): Promise<ExecOutcome & { status: number }> {
  const res = await fetch(`${base}/v1/sandboxes/${name}/execs/${execId}/output${query}`);
  if (res.status !== 200) return { status: res.status, events: [], stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), last: (await res.json()) as ExecEvent };
  const events: ExecEvent[] = [];
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  for await (const e of ndjson<ExecEvent>(res.body as unknown as AsyncIterable<Uint8Array>)) {
    events.push(e);
    if (e.type === 'stdout') out.push(Buffer.from(e.data, 'base64'));
    if (e.type === 'stderr') err.push(Buffer.from(e.data, 'base64'));
  }
  return { status: 200, events, stdout: Buffer.concat(out), stderr: Buffer.concat(err), last: events.at(-1) };
}

/** Polls `GET …/execs/:id` until `accept` holds (bounded). */
async function until(base: string, name: string, execId: string, accept: (e: ExecInfo) => boolean, ms = 10_000): Promise<ExecInfo> {
  const deadline = Date.now() + ms;
  for (;;) {
    const { body } = await api<ExecInfo>(base, 'GET', `/v1/sandboxes/${name}/execs/${execId}`);
    if (accept(body)) return body;
    if (Date.now() > deadline) throw new Error(`exec ${execId} never matched: ${JSON.stringify(body)}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

t.test('durable execs: detach, list, get, output replay, follow, signal', async (t) => {
  const gw = await startGateway(t);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'dur' });
  await waitForPhase(gw.app, 'dur', 'Ready');
  const base = `/v1/sandboxes/dur`;

  t.test('detach → 202; list and get show running, then exited with its code', async (t) => {
    const started = await api<{ execId: string }>(gw.url, 'POST', `${base}/exec`, {
      command: ['sh', '-c', 'echo hello; echo oops >&2; sleep 0.5; exit 3'],
      detach: true,
    });
    t.equal(started.status, 202);
    t.match(started.body.execId, /^ex_/);
    const id = started.body.execId;
    const list = await api<ExecList>(gw.url, 'GET', `${base}/execs`);
    t.equal(list.status, 200);
    const mine = list.body.execs.find((e) => e.execId === id);
    t.match(mine, { state: 'running', command: ['sh', '-c', 'echo hello; echo oops >&2; sleep 0.5; exit 3'], exitCode: null, finishedAt: null });
    const done = await until(gw.url, 'dur', id, (e) => e.state === 'exited');
    t.match(done, { state: 'exited', exitCode: 3, signal: null, timedOut: false, stdoutBytes: 6, stderrBytes: 5 });
    t.ok(Date.parse(done.finishedAt!) >= Date.parse(done.startedAt), 'finished after it started');
    const replay = await output(gw.url, 'dur', id);
    t.equal(replay.stdout.toString(), 'hello\n');
    t.equal(replay.stderr.toString(), 'oops\n');
    t.match(replay.last, { type: 'exit', exitCode: 3 });
  });

  t.test('signal ends a detached exec with that signal; signalling it again is 409', async (t) => {
    const { body } = await api<{ execId: string }>(gw.url, 'POST', `${base}/exec`, { command: ['sleep', '60'], detach: true });
    const sent = await api(gw.url, 'POST', `${base}/execs/${body.execId}/signal`, { signal: 'SIGTERM' });
    t.equal(sent.status, 200);
    t.match(sent.body, { execId: body.execId, signal: 'SIGTERM', delivered: true });
    const done = await until(gw.url, 'dur', body.execId, (e) => e.state === 'exited');
    t.match(done, { exitCode: null, signal: 'SIGTERM' });
    const again = await api<{ error: { code: string } }>(gw.url, 'POST', `${base}/execs/${body.execId}/signal`, { signal: 'KILL' });
    t.equal(again.status, 409);
    t.equal(again.body.error.code, 'CONFLICT');
    const bad = await api<{ error: { code: string; message: string } }>(gw.url, 'POST', `${base}/execs/${body.execId}/signal`, { signal: 'NOPE!' });
    t.equal(bad.status, 400);
    t.match(bad.body.error.message, /^body\.signal/);
  });

  t.test('follow=true on a running exec ends with the real exit; follow=false ends with `running`', async (t) => {
    const { body } = await api<{ execId: string }>(gw.url, 'POST', `${base}/exec`, {
      command: ['sh', '-c', 'i=0; while [ $i -lt 10 ]; do i=$((i+1)); echo line$i; sleep 0.1; done; exit 4'],
      detach: true,
    });
    await until(gw.url, 'dur', body.execId, (e) => e.stdoutBytes > 0);
    const now = await output(gw.url, 'dur', body.execId, '?follow=false');
    t.match(now.last, { type: 'running' }, 'the snapshot says it is still running');
    const last = now.last as { stdoutOffset: number };
    t.equal(now.stdout.length, last.stdoutOffset, 'and where it stopped');
    const followed = await output(gw.url, 'dur', body.execId, `?follow=true&stdoutOffset=${last.stdoutOffset}`);
    t.match(followed.last, { type: 'exit', exitCode: 4 });
    const lines = Array.from({ length: 10 }, (_, i) => `line${i + 1}\n`).join('');
    t.equal(Buffer.concat([now.stdout, followed.stdout]).toString(), lines, 'snapshot + follow = every line once');
    t.equal(followed.events.filter((e) => e.type === 'started').length, 1);
  });

  t.test('replay from 0 and from a middle offset equals a direct run byte for byte (20 MiB, binary)', async (t) => {
    const made = await execStream(gw.url, 'dur', { command: ['sh', '-c', 'head -c 20971520 /dev/urandom > replay.bin'] });
    t.match(made.last, { type: 'exit', exitCode: 0 });
    const direct = await execStream(gw.url, 'dur', { command: ['cat', 'replay.bin'] });
    t.equal(direct.stdout.length, 20 * 1024 * 1024);
    const { body } = await api<{ execId: string }>(gw.url, 'POST', `${base}/exec`, { command: ['cat', 'replay.bin'], detach: true });
    await until(gw.url, 'dur', body.execId, (e) => e.state === 'exited', 30_000);
    const all = await output(gw.url, 'dur', body.execId);
    t.equal(sha(all.stdout), sha(direct.stdout), 'from 0');
    t.match(all.last, { type: 'exit', exitCode: 0 });
    const mid = 7 * 1024 * 1024 + 12345;
    const tail = await output(gw.url, 'dur', body.execId, `?stdoutOffset=${mid}&follow=true`);
    t.equal(tail.stdout.length, direct.stdout.length - mid);
    t.equal(sha(tail.stdout), sha(direct.stdout.subarray(mid)), 'from the middle');
    const first = tail.events.find((e) => e.type === 'stdout') as { offset: number };
    t.equal(first.offset, mid, 'offsets are stream positions');
    await execStream(gw.url, 'dur', { command: ['rm', '-f', 'replay.bin'] });
  });

  t.test('unknown exec → 404 EXEC_NOT_FOUND; offsets beyond the output → 400', async (t) => {
    for (const path of ['/execs/ex_nope', '/execs/ex_nope/output']) {
      const r = await api<{ error: { code: string } }>(gw.url, 'GET', `${base}${path}`);
      t.equal(r.status, 404, path);
      t.equal(r.body.error.code, 'EXEC_NOT_FOUND');
    }
    const sig = await api<{ error: { code: string } }>(gw.url, 'POST', `${base}/execs/ex_nope/signal`, { signal: 'TERM' });
    t.equal(sig.status, 404);
    const { body } = await api<{ execId: string }>(gw.url, 'POST', `${base}/exec`, { command: ['echo', 'hi'], detach: true });
    await until(gw.url, 'dur', body.execId, (e) => e.state === 'exited');
    const far = await api<{ error: { code: string; message: string } }>(gw.url, 'GET', `${base}/execs/${body.execId}/output?stdoutOffset=999`);
    t.equal(far.status, 400);
    t.match(far.body.error.message, /offsets\.stdout/);
    const unknownSandbox = await api<{ error: { code: string } }>(gw.url, 'GET', `/v1/sandboxes/nope/execs`);
    t.equal(unknownSandbox.body.error.code, 'SANDBOX_NOT_FOUND');
  });

  t.test('the OpenAPI document has the execs routes', async (t) => {
    const doc = (await api<{ paths: Record<string, unknown> }>(gw.url, 'GET', '/docs/json')).body;
    for (const p of ['/v1/sandboxes/{name}/execs', '/v1/sandboxes/{name}/execs/{execId}', '/v1/sandboxes/{name}/execs/{execId}/output', '/v1/sandboxes/{name}/execs/{execId}/signal']) {
      t.ok(doc.paths[p], p);
    }
  });
});

t.test('requestId: racing POSTs and a retry run one process; three identical outputs and exits', async (t) => {
  const gw = await startGateway(t);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'idem' });
  await waitForPhase(gw.app, 'idem', 'Ready');
  // The side effect is counted inside the sandbox (its working directory).
  const command = ['sh', '-c', 'echo run >> runs.txt; for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; sleep 0.1; done; exit 5'];
  const body = { command, requestId: 'job-42:attempt.1' };
  const [a, b] = await Promise.all([execStream(gw.url, 'idem', body), execStream(gw.url, 'idem', body)]);
  const c = await execStream(gw.url, 'idem', body);
  for (const [label, r] of [['first', a], ['racing', b], ['retry', c]] as const) {
    t.equal(r.stdout.toString(), 'out1\nout2\nout3\nout4\nout5\n', `${label}: stdout`);
    t.equal(r.stderr.toString(), 'err1\nerr2\nerr3\nerr4\nerr5\n', `${label}: stderr`);
    t.match(r.last, { type: 'exit', exitCode: 5 }, `${label}: exit`);
  }
  const ids = [a, b, c].map((r) => (r.events[0] as { execId: string }).execId);
  t.equal(new Set(ids).size, 1, 'one execId');
  const runs = await execStream(gw.url, 'idem', { command: ['cat', 'runs.txt'] });
  t.equal(runs.stdout.toString(), 'run\n', 'the command ran once');

  const detached = await api<{ execId: string }>(gw.url, 'POST', '/v1/sandboxes/idem/exec', { ...body, detach: true });
  t.equal(detached.status, 202);
  t.equal(detached.body.execId, ids[0], 'a detached retry names the same exec');
  const info = await api<ExecInfo>(gw.url, 'GET', `/v1/sandboxes/idem/execs/${ids[0]}`);
  t.equal(info.body.requestId, 'job-42:attempt.1');

  const other = await api<{ error: { code: string } }>(gw.url, 'POST', '/v1/sandboxes/idem/exec', { command: ['true'], requestId: 'job-42:attempt.1', detach: true });
  t.equal(other.status, 409, 'the same id for another command is a conflict');

  for (const bad of ['', 'has space', 'x'.repeat(129), 'semi;colon']) {
    const r = await api<{ error: { code: string; message: string; details: { field: string } } }>(gw.url, 'POST', '/v1/sandboxes/idem/exec', { command: ['true'], requestId: bad });
    t.equal(r.status, 400, `"${bad.slice(0, 10)}" → 400`);
    t.equal(r.body.error.details.field, 'body.requestId');
  }
});

t.test('a caller with a requestId that goes away: the process survives the grace and a retry attaches', async (t) => {
  const gw = await startGateway(t, { execResumeWindowMs: 3000 });
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'grace' });
  await waitForPhase(gw.app, 'grace', 'Ready');
  const body = { command: ['sh', '-c', 'echo $$; sleep 1.5; echo done'], requestId: 'leave-and-return' };
  const abort = new AbortController();
  let pid = 0;
  await execStream(gw.url, 'grace', body, {
    signal: abort.signal,
    onEvent: (e) => {
      if (e.type === 'stdout' && !pid) {
        pid = Number(Buffer.from(e.data, 'base64').toString().trim());
        abort.abort();
      }
    },
  }).catch(() => undefined);
  t.ok(pid > 0 && alive(pid), 'still running after its caller left');
  const again = await execStream(gw.url, 'grace', body);
  t.equal(again.stdout.toString(), `${pid}\ndone\n`);
  t.match(again.last, { type: 'exit', exitCode: 0 });

  // Nobody comes back: killed once the grace (the resume window) passes.
  const lone = { command: ['sh', '-c', 'echo $$; exec sleep 60'], requestId: 'leave-for-good' };
  const abort2 = new AbortController();
  let pid2 = 0;
  await execStream(gw.url, 'grace', lone, {
    signal: abort2.signal,
    onEvent: (e) => {
      if (e.type === 'stdout' && !pid2) {
        pid2 = Number(Buffer.from(e.data, 'base64').toString().trim());
        abort2.abort();
      }
    },
  }).catch(() => undefined);
  const left = Date.now();
  const deadline = left + 10_000;
  while (alive(pid2) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.notOk(alive(pid2), `killed ${Date.now() - left} ms after its caller left`);
  t.ok(Date.now() - left >= 2500, 'not before the grace');
});

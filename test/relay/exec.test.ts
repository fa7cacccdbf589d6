import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import t from 'tap';
import { LINE_BYTES } from '../../src/relay/exec-stream.js';
import type { Sandbox } from '../../src/schemas/sandbox.js';
import type { ExecResult } from '../../src/schemas/sandbox.js';
import { execStream, goneInSandbox } from '../helpers/exec.js';
import { api, startGateway, waitForPhase } from '../helpers/gateway.js';
import { fakeSession } from '../helpers/sandbox.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

t.test('exec through the real gateway and supervisor', async (t) => {
  const gw = await startGateway(t);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'ex', env: { SANDBOX_VAR: 'from-sandbox' } });
  await waitForPhase(gw.app, 'ex', 'Ready');

  t.test('stdout and stderr separated, ordered, with offsets; exit code', async (t) => {
    const r = await execStream(gw.url, 'ex', {
      command: ['sh', '-c', 'for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 7'],
    });
    t.equal(r.events[0].type, 'started');
    t.match((r.events[0] as { execId: string }).execId, /^ex_/);
    t.equal(r.stdout.toString(), 'out1\nout2\nout3\n');
    t.equal(r.stderr.toString(), 'err1\nerr2\nerr3\n');
    t.match(r.last, { type: 'exit', exitCode: 7, signal: null });
    const offsets = r.events.filter((e) => e.type === 'stdout').map((e) => (e as { offset: number }).offset);
    t.equal(offsets[0], 0);
    t.same([...offsets].sort((a, b) => a - b), offsets, 'offsets ascend');
    t.equal(r.events.filter((e) => e.type === 'exit' || e.type === 'error').length, 1, 'exactly one terminal event');
  });

  t.test('signals, env, workdir, a string command', async (t) => {
    const killed = await execStream(gw.url, 'ex', { command: ['sh', '-c', 'kill -TERM $$'] });
    t.match(killed.last, { type: 'exit', exitCode: null, signal: 'SIGTERM' });
    const env = await execStream(gw.url, 'ex', {
      command: 'echo "$SANDBOX_VAR $EXTRA $(pwd)"',
      env: { EXTRA: 'per-exec' },
      workdir: '/tmp',
    });
    t.equal(env.stdout.toString(), 'from-sandbox per-exec /tmp\n');
    t.match(env.last, { type: 'exit', exitCode: 0 });
  });

  t.test('10 MiB of stdin round-trips through cat', async (t) => {
    const data = randomBytes(10 * 1024 * 1024);
    const r = await execStream(gw.url, 'ex', { command: ['cat'], stdin: data.toString('base64') });
    t.equal(r.stdout.length, data.length);
    t.equal(sha(r.stdout), sha(data));
    t.match(r.last, { type: 'exit', exitCode: 0 });
  });

  t.test('binary output intact', async (t) => {
    const r = await execStream(gw.url, 'ex', {
      command: ['sh', '-c', 'head -c 1048576 /dev/urandom > /tmp/openshell-bin.$$; cat /tmp/openshell-bin.$$; sha256sum /tmp/openshell-bin.$$ >&2; rm /tmp/openshell-bin.$$'],
    });
    t.equal(r.stdout.length, 1048576);
    t.equal(r.stderr.toString().split(' ')[0], sha(r.stdout));
    // Relay frames reach 128 KiB; a line carries at most LINE_BYTES, so its
    // base64 string stays out of V8's slow large-object space on both ends.
    const lines = r.events.filter((e) => e.type === 'stdout') as { data: string; offset: number }[];
    let next = 0;
    for (const l of lines) {
      const n = Buffer.from(l.data, 'base64').length;
      if (n > LINE_BYTES || l.offset !== next) {
        t.fail(`line at ${l.offset} carries ${n} bytes; expected offset ${next}, at most ${LINE_BYTES}`);
        break;
      }
      next += n;
    }
    t.equal(next, 1048576, 'lines are contiguous and cover the output');
  });

  t.test('buffered JSON mode', async (t) => {
    const res = await fetch(`${gw.url}/v1/sandboxes/ex/exec`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify({ command: ['sh', '-c', 'echo hello; echo oops >&2; exit 3'] }),
    });
    t.equal(res.status, 200);
    const body = (await res.json()) as ExecResult;
    t.match(body, { exitCode: 3, signal: null, stdout: 'hello\n', stderr: 'oops\n' });
    t.type(body.durationMs, 'number');
  });

  t.test('timeout → 124, the whole process group (grandchild too) gone', async (t) => {
    const pids: number[] = [];
    const r = await execStream(
      gw.url,
      'ex',
      { command: ['sh', '-c', 'sleep 100 & echo $!; echo $$; sleep 100'], timeoutSeconds: 1 },
      {
        onEvent: (e) => {
          if (e.type === 'stdout') pids.push(...Buffer.from(e.data, 'base64').toString().trim().split('\n').map(Number));
        },
      },
    );
    t.match(r.last, { type: 'exit', exitCode: 124, timedOut: true });
    t.equal(pids.length, 2);
    t.ok(await goneInSandbox(gw.url, 'ex', pids), `pids ${pids.join(' ')} gone`);
  });

  t.test('caller disconnect kills the process group', async (t) => {
    const abort = new AbortController();
    const pids: number[] = [];
    const done = execStream(
      gw.url,
      'ex',
      { command: ['sh', '-c', 'sleep 100 & echo $!; echo $$; wait'] },
      {
        signal: abort.signal,
        onEvent: (e) => {
          if (e.type === 'stdout') {
            pids.push(...Buffer.from(e.data, 'base64').toString().trim().split('\n').map(Number));
            if (pids.length >= 2) abort.abort();
          }
        },
      },
    ).catch((err: Error) => err);
    await done;
    t.equal(pids.length, 2);
    t.ok(await goneInSandbox(gw.url, 'ex', pids), `pids ${pids.join(' ')} gone`);
    const deadline = Date.now() + 5000;
    while (gw.app.openshell.execs.activeCount > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    t.equal(gw.app.openshell.execs.activeCount, 0, 'the gateway no longer tracks the exec');
  });

  t.test('validation: 400 naming the field', async (t) => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{}, 'body.command'],
      [{ command: [] }, 'body.command'],
      [{ command: Array.from({ length: 1025 }, () => 'x') }, 'body.command'],
      [{ command: ['true'], env: { '1BAD': 'x' } }, 'body.env'],
      [{ command: ['true'], stdin: 'not base64!' }, 'stdin'],
      [{ command: ['true'], timeoutSeconds: -1 }, 'body.timeoutSeconds'],
    ];
    for (const [body, field] of cases) {
      const res = await api<{ error: { code: string; message: string } }>(gw.url, 'POST', '/v1/sandboxes/ex/exec', body);
      t.equal(res.status, 400, JSON.stringify(body).slice(0, 50));
      t.match(res.body.error.message, field);
    }
    const missing = await api(gw.url, 'POST', '/v1/sandboxes/nope/exec', { command: ['true'] });
    t.equal(missing.status, 404);
  });
});

t.test('a deleted sandbox answers 404 to exec', async (t) => {
  const gw = await startGateway(t);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'idle' });
  await waitForPhase(gw.app, 'idle', 'Ready');
  await api(gw.url, 'DELETE', '/v1/sandboxes/idle');
  await gw.app.openshell.sandboxes.deleted((await gw.app.openshell.store.list())[0]?.id ?? '');
  const res = await api<{ error: { code: string } }>(gw.url, 'POST', '/v1/sandboxes/idle/exec', { command: ['true'] });
  t.equal(res.status, 404);
});

t.test('exec relays are reused between execs, never across sessions', async (t) => {
  const gw = await startGateway(t, { warmSupervisors: 0 });
  const s = (await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'reuse' })).body;
  await waitForPhase(gw.app, 'reuse', 'Ready');
  const broker = gw.app.openshell.broker;
  const opens = async (): Promise<number> => {
    const text = await (await fetch(`${gw.url}/metrics`)).text();
    return Number(/openshell_relay_opens_total\{target="exec",result="ok"\} (\d+)/.exec(text)?.[1] ?? 0);
  };

  for (let i = 0; i < 3; i++) {
    const r = await execStream(gw.url, 'reuse', { command: ['sh', '-c', `echo run${i}`] });
    t.equal(r.stdout.toString(), `run${i}\n`);
    t.match(r.last, { type: 'exit', exitCode: 0 });
  }
  t.equal(await opens(), 1, 'three sequential execs opened one relay');
  t.equal(broker.openCount, 1);
  t.equal(broker.idleCount, 1, 'kept for the next exec');

  const cat = await execStream(gw.url, 'reuse', { command: ['cat'], stdin: Buffer.from('on a reused relay').toString('base64') });
  t.equal(cat.stdout.toString(), 'on a reused relay', 'stdin reaches the exec on a reused relay');
  const failed = await execStream(gw.url, 'reuse', { command: ['/nonexistent/program'] });
  t.match(failed.last, { type: 'error' });
  const after = await execStream(gw.url, 'reuse', { command: ['echo', 'still fine'] });
  t.equal(after.stdout.toString(), 'still fine\n', 'a spawn failure leaves the relay usable');

  const four = await Promise.all(Array.from({ length: 4 }, (_, i) => execStream(gw.url, 'reuse', { command: ['sh', '-c', `sleep 0.2; echo c${i}`] })));
  t.same(four.map((r) => r.stdout.toString()), ['c0\n', 'c1\n', 'c2\n', 'c3\n']);
  t.equal(broker.idleCount, 4, 'four concurrent execs leave four relays to reuse');
  t.equal(await opens(), 4);

  // A new session for the sandbox supersedes the supervisor's: its idle relays go with it.
  const { ws: fake, sessionId: fakeId } = await fakeSession(t, gw, s.id);
  await waitUntil(() => broker.idleCount === 0 && broker.openCount === 0);
  t.pass('idle relays of the superseded session are closed');
  fake.close();
  await waitUntil(() => {
    const current = gw.app.openshell.sessions.get(s.id)?.sessionId;
    return current !== undefined && current !== fakeId;
  }, 10_000);
  // The supervisor reconnects; the next exec rides a fresh relay of the new session.
  const fresh = await execStream(gw.url, 'reuse', { command: ['echo', 'new session'] });
  t.equal(fresh.stdout.toString(), 'new session\n');
  t.equal(await opens(), 5);
});

async function waitUntil(cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

t.test('buffered JSON mode keeps at most --exec-buffer-limit-bytes per stream: the tail, flagged, exit code kept', async (t) => {
  const LIMIT = 64 * 1024;
  const gw = await startGateway(t, { execBufferLimitBytes: LIMIT });
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'cap' });
  await waitForPhase(gw.app, 'cap', 'Ready');
  const exec = async (script: string) => {
    const res = await fetch(`${gw.url}/v1/sandboxes/cap/exec`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify({ command: ['sh', '-c', script] }),
    });
    t.equal(res.status, 200);
    return (await res.json()) as ExecResult & Record<string, unknown>;
  };
  // 4 MiB of 'a', then a last line; 3 bytes on stderr. A multi-byte character is cut by the limit.
  const big = await exec(`head -c 4194304 /dev/zero | tr '\\0' a; printf 'é%.0s' $(seq 1 40000); echo END.; printf err >&2; exit 5`);
  t.equal(big.exitCode, 5, 'the exit code survives');
  t.equal(big.stdoutTruncated, true);
  t.equal(big.stdoutBytes, 4194304 + 80000 + 5, 'the total size is reported');
  t.ok(Buffer.byteLength(big.stdout as string) <= LIMIT, 'at most the limit is kept');
  t.ok((big.stdout as string).endsWith('éééEND.\n'), 'the tail is what is kept');
  t.notOk((big.stdout as string).startsWith('\ufffd'), 'the cut lands on a character boundary');
  t.equal(big.stderr, 'err');
  t.notOk('stderrTruncated' in big, 'a stream under the limit is not flagged');

  const small = await exec('echo hi');
  t.same(Object.keys(small).sort(), ['durationMs', 'exitCode', 'signal', 'stderr', 'stdout']);
});

t.test('a caller that leaves a stalled bulk stream: its relay closes at once, not after a close-handshake timeout', async (t) => {
  const gw = await startGateway(t);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'flood' });
  await waitForPhase(gw.app, 'flood', 'Ready');
  const { broker } = gw.app.openshell;
  const req = http.request(`${gw.url}/v1/sandboxes/flood/exec`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/x-ndjson' },
  });
  req.end(JSON.stringify({ command: ['sh', '-c', 'cat /dev/zero'] }));
  const [res] = (await once(req, 'response')) as [http.IncomingMessage];
  await once(res, 'data');
  res.pause(); // stop reading: the gateway's buffers fill and it pauses the relay
  // Let backpressure reach the relay (nothing to await from outside).
  await new Promise((r) => setTimeout(r, 1000));
  t.equal(broker.openCount, 1, 'one relay open');
  const leftAt = Date.now();
  req.destroy();
  while (broker.openCount > 0 && Date.now() - leftAt < 20_000) await new Promise((r) => setTimeout(r, 50));
  const ms = Date.now() - leftAt;
  t.equal(broker.openCount, 0, 'the relay is gone');
  t.ok(ms < 10_000, `closed ${ms} ms after the caller left (a paused relay would wait out ws's 30 s close timer)`);
});

import t from 'tap';
import {
  OpenShellApiError,
  OpenShellClient,
  OpenShellConnectionError,
  SandboxWaitError,
  parseNdjson,
  type Sandbox,
} from '../../src/client/index.js';
import { freePort as closedPort } from '../../bench/ports.js';
import { startGateway, type Teardown } from '../helpers/gateway.js';
import { startTcpProxy } from '../helpers/tcp-proxy.js';


async function* chunksOf(...parts: Array<string | Uint8Array>): AsyncGenerator<Uint8Array | string> {
  for (const p of parts) yield p;
}

function snapshot(name: string, phase: Sandbox['phase'], reason: string, message = ''): Sandbox {
  return {
    id: 'sbx_test',
    name,
    phase,
    driver: 'process',
    image: null,
    command: [],
    labels: {},
    env: [],
    createdAt: new Date().toISOString(),
    expiresAt: null,
    policyVersion: 1,
    conditions: [{ type: 'Ready', status: phase === 'Ready' ? 'True' : 'False', reason, message, lastTransitionTime: '' }],
    mainProcess: { state: 'Pending', exitCode: null, signal: null },
    resources: {},
  };
}

/** A fetch answering every call with this NDJSON body (kept open unless `end`), recording requests. */
function ndjsonFetch(lines: unknown[], end: boolean, seen: Request[] = []): typeof fetch {
  return (async (input: string | URL | Request, init?: RequestInit) => {
    seen.push(new Request(input, init));
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        for (const l of lines) controller.enqueue(new TextEncoder().encode(`${JSON.stringify(l)}\n`));
        if (end) controller.close();
      },
    });
    return new Response(body, { status: 200, headers: { 'content-type': 'application/x-ndjson' } });
  }) as typeof fetch;
}

t.test('parseNdjson: lines split across chunks, multi-byte characters split, blank lines, no final newline', async (t) => {
  const euro = Buffer.from('"€"');
  const got: unknown[] = [];
  for await (const v of parseNdjson(
    chunksOf('{"a":', '1}\n\n{"b"', ':[1,2]}\n', euro.subarray(0, 2), euro.subarray(2), '\r\n{"c":true}'),
  )) {
    got.push(v);
  }
  t.same(got, [{ a: 1 }, { b: [1, 2] }, '€', { c: true }]);
});

t.test('parseNdjson: exec output lines take a fast path that agrees with JSON.parse, and fall back on anything else', async (t) => {
  const lines = [
    '{"type":"stdout","data":"aGVsbG8K","offset":0}',
    '{"type":"stderr","data":"","offset":12345678901}',
    '{"type":"stdout","data":"aGk=","offset":6}\r',
    // not the gateway's exact spelling: parsed by JSON.parse
    '{"type":"stdout","data":"a\\/b","offset":9}',
    '{"type":"stdout","data":"aGk=","offset":6,"extra":true}',
    '{"type":"stdout","data":"é","offset":1}',
    '{"type":"stdout","offset":3,"data":"aGk="}',
    '{"type":"stdout","data":"aGk=","offset":007}',
    '{"type":"exit","exitCode":0}',
  ];
  const expected = lines.slice(0, 7).map((l) => JSON.parse(l.replace(/\r$/, '')) as unknown);
  const text = lines.join('\n');
  const bytes = Buffer.from(text);
  // every split point, so a line cut anywhere (even inside 'é') still parses
  for (const cut of [1, 7, 30, 47, 48, bytes.indexOf('é') + 1, bytes.length - 3]) {
    const got: unknown[] = [];
    try {
      for await (const v of parseNdjson(chunksOf(bytes.subarray(0, cut), bytes.subarray(cut)))) got.push(v);
      t.fail(`cut ${cut}: the leading-zero offset must be refused by JSON.parse`);
    } catch (err) {
      t.type(err, SyntaxError, `cut ${cut}: JSON.parse refused the invalid line`);
    }
    t.same(got, expected, `cut ${cut}`);
  }
  const after: unknown[] = [];
  for await (const v of parseNdjson(chunksOf(lines[8]!))) after.push(v);
  t.same(after, [{ type: 'exit', exitCode: 0 }]);
});

t.test('OpenShellApiError from the envelope, and from a body that is not one', async (t) => {
  const e = OpenShellApiError.fromBody(404, 'Not Found', '{"error":{"code":"SANDBOX_NOT_FOUND","message":"sandbox \\"x\\" not found","details":{"name":"x"}}}');
  t.ok(e instanceof Error);
  t.equal(e.status, 404);
  t.equal(e.code, 'SANDBOX_NOT_FOUND');
  t.equal(e.message, 'sandbox "x" not found');
  t.same(e.details, { name: 'x' });
  const raw = OpenShellApiError.fromBody(502, 'Bad Gateway', '<html>upstream down</html>');
  t.equal(raw.code, 'HTTP_502');
  t.match(raw.message, /HTTP 502 Bad Gateway: <html>upstream down/);
});

t.test('bearer token, label query and URL building', async (t) => {
  const seen: Request[] = [];
  const client = new OpenShellClient({
    baseUrl: 'https://gw.example:9443/',
    token: 's3cret',
    fetch: (async (input: string | URL | Request, init?: RequestInit) => {
      seen.push(new Request(input, init));
      return Response.json({ sandboxes: [] });
    }) as typeof fetch,
  });
  t.same(await client.listSandboxes({ labels: { team: 'a', env: 'ci' } }), { sandboxes: [] });
  t.equal(seen[0].headers.get('authorization'), 'Bearer s3cret');
  const url = new URL(seen[0].url);
  t.equal(url.pathname, '/v1/sandboxes');
  t.same(url.searchParams.getAll('label'), ['team=a', 'env=ci']);
  t.equal(client.sshUrl('box'), 'wss://gw.example:9443/v1/sandboxes/box/ssh');
  const execUrl = new URL(client.execUrl('box', { command: ['sh', '-c', 'echo hi'], tty: true }));
  t.equal(execUrl.protocol, 'wss:');
  t.equal(execUrl.pathname, '/v1/sandboxes/box/exec');
  t.same(execUrl.searchParams.getAll('command'), ['sh', '-c', 'echo hi']);
  t.equal(execUrl.searchParams.get('tty'), 'true');
  t.same(client.wsHeaders(), { authorization: 'Bearer s3cret' });
  t.throws(() => new OpenShellClient({ baseUrl: 'ftp://x' }), /invalid gateway URL/);
});

t.test('unreachable gateway: the error names the URL and the cause', async (t) => {
  const port = await closedPort();
  const client = new OpenShellClient({ baseUrl: `http://127.0.0.1:${port}` });
  const err = await client.listSandboxes().then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof OpenShellConnectionError);
  t.equal((err as Error).message, `cannot reach the gateway at http://127.0.0.1:${port}: ECONNREFUSED`);
  t.equal((err as OpenShellConnectionError).code, 'ECONNREFUSED');
});

t.test('waitForReady: Error phase and timeout name phase, reason and message', async (t) => {
  const failing = new OpenShellClient({
    baseUrl: 'http://gw.invalid',
    fetch: ndjsonFetch([snapshot('a', 'Provisioning', 'Provisioning'), snapshot('a', 'Error', 'DriverError', 'supervisor process exited (code 1)')], false),
  });
  const updates: string[] = [];
  const e1 = await failing.waitForReady('a', { timeoutMs: 5000, onUpdate: (s) => updates.push(s.phase) }).catch((e: unknown) => e);
  t.ok(e1 instanceof SandboxWaitError);
  t.equal((e1 as Error).message, 'sandbox "a" reached phase Error, reason DriverError: supervisor process exited (code 1)');
  t.equal((e1 as SandboxWaitError).phase, 'Error');
  t.same(updates, ['Provisioning', 'Error']);

  const stuck = new OpenShellClient({
    baseUrl: 'http://gw.invalid',
    fetch: ndjsonFetch([snapshot('b', 'Provisioning', 'SupervisorDisconnected', 'session lost')], false),
  });
  const e2 = await stuck.waitForReady('b', { timeoutMs: 200 }).catch((e: unknown) => e);
  t.ok(e2 instanceof SandboxWaitError);
  t.equal((e2 as Error).message, 'sandbox "b" not Ready after 0.2s (phase Provisioning, reason SupervisorDisconnected: session lost)');

  const gone = new OpenShellClient({ baseUrl: 'http://gw.invalid', fetch: ndjsonFetch([snapshot('c', 'Provisioning', 'Provisioning')], true) });
  await t.rejects(gone.waitForReady('c', { timeoutMs: 5000 }), /sandbox "c" was deleted before it became Ready/);

  const abort = new AbortController();
  const waiting = stuck.waitForReady('b', { timeoutMs: 5000, signal: abort.signal });
  abort.abort(new Error('user gave up'));
  await t.rejects(waiting, /user gave up/);
});

t.test('against a real gateway: create, wait, watch until deleted, errors', async (t) => {
  const gw = await startGateway(t);
  const client = new OpenShellClient({ baseUrl: gw.url });

  const created = await client.createSandbox({ name: 'client-one', labels: { suite: 'client' }, command: ['sleep', '300'] });
  t.equal(created.name, 'client-one');
  const ready = await client.waitForReady('client-one', { timeoutMs: 20_000 });
  t.equal(ready.phase, 'Ready');
  t.equal((await client.getSandbox('client-one')).id, created.id);
  t.same((await client.listSandboxes({ labels: { suite: 'client' } })).sandboxes.map((s) => s.name), ['client-one']);
  t.same((await client.listSandboxes({ labels: { suite: 'other' } })).sandboxes, []);

  // The watch yields the current state first, then changes, and ends once the sandbox is gone.
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 20_000);
  t.teardown(() => clearTimeout(timer));
  const phases: string[] = [];
  for await (const s of client.watchSandbox('client-one', { signal: abort.signal })) {
    phases.push(s.phase);
    if (phases.length === 1) t.same((await client.deleteSandbox('client-one')).phase, 'Deleting');
  }
  t.equal(phases[0], 'Ready');
  t.equal(phases.at(-1), 'Deleting');
  t.notOk(abort.signal.aborted, 'the watch ended by itself');

  const notFound = await client.getSandbox('client-one').catch((e: unknown) => e);
  t.ok(notFound instanceof OpenShellApiError);
  t.equal((notFound as OpenShellApiError).status, 404);
  t.equal((notFound as OpenShellApiError).code, 'SANDBOX_NOT_FOUND');
  t.equal((notFound as Error).message, 'sandbox "client-one" not found');

  const bad = await client.createSandbox({ name: 'Not_Valid' }).catch((e: unknown) => e);
  t.ok(bad instanceof OpenShellApiError);
  t.equal((bad as OpenShellApiError).code, 'INVALID_ARGUMENT');
  t.match((bad as Error).message, /name/);

  await t.rejects(client.watchSandbox('client-one').next(), { code: 'SANDBOX_NOT_FOUND' });
});

t.test('bearer token against a gateway that requires one', async (t) => {
  const gw = await startGateway(t, { authToken: 'tok-123' });
  await t.rejects(new OpenShellClient({ baseUrl: gw.url }).listSandboxes(), { status: 401, code: 'UNAUTHENTICATED' });
  t.same(await new OpenShellClient({ baseUrl: gw.url, token: 'tok-123' }).listSandboxes(), { sandboxes: [] });
});

/** A gateway reached through a TCP proxy that can black-hole the connection, and a client with a 1 s idle timeout holding a Ready sandbox. */
async function behindProxy(t: Teardown, name: string) {
  const gw = await startGateway(t);
  const proxy = await startTcpProxy({ host: '127.0.0.1', port: Number(new URL(gw.url).port) });
  t.teardown(() => proxy.close());
  const client = new OpenShellClient({ baseUrl: `http://127.0.0.1:${proxy.port}`, streamIdleTimeoutMs: 1000 });
  await client.createSandbox({ name });
  await client.waitForReady(name);
  return { gw, proxy, client };
}

t.test('exec stream through a black-holed connection: the iteration fails within the idle timeout, not never', async (t) => {
  const { gw, proxy, client } = await behindProxy(t, 'nat');
  const events: string[] = [];
  let holedAt = 0;
  const err = await (async () => {
    try {
      for await (const e of client.exec('nat', { command: 'while :; do echo tick; sleep 0.2; done' }, { resume: { timeoutMs: 0 } })) {
        events.push(e.type);
        if (e.type === 'stdout' && holedAt === 0) {
          holedAt = Date.now();
          proxy.blackhole();
        }
      }
    } catch (e) {
      return e as OpenShellConnectionError;
    }
    return null;
  })();
  const after = Date.now() - holedAt;
  t.ok(err instanceof OpenShellConnectionError, 'a connection error');
  t.equal(err?.code, 'ESTREAMIDLE');
  t.match(err?.message, /no data on the stream for 1 s/);
  t.ok(after < 1000 + 2000, `the stream failed ${after} ms after the connection went silent`);
  t.throws(() => new OpenShellClient({ baseUrl: gw.url, streamIdleTimeoutMs: -1 }), /streamIdleTimeoutMs/);
});

t.test('exec stream reset mid-output (a load balancer reset): the client re-attaches, every byte once, the real exit', async (t) => {
  const { proxy, client } = await behindProxy(t, 'reset');
  const N = 30;
  const script = `i=0; while [ $i -lt ${N} ]; do i=$((i+1)); echo line$i; echo err$i >&2; sleep 0.05; done; exit 6`;
  let out = '';
  let err = '';
  let resets = 0;
  const retries: number[] = [];
  let last: unknown;
  let started = 0;
  for await (const e of client.exec('reset', { command: script }, { resume: { timeoutMs: 10_000, onRetry: (r) => retries.push(r.attempt) } })) {
    if (e.type === 'started') started++;
    if (e.type === 'stdout') {
      out += Buffer.from(e.data, 'base64').toString();
      if ((out.length > 20 && resets === 0) || (out.length > 120 && resets === 1)) {
        resets++;
        proxy.resetAll();
      }
    }
    if (e.type === 'stderr') err += Buffer.from(e.data, 'base64').toString();
    if (e.type === 'exit' || e.type === 'error') last = e;
  }
  t.equal(resets, 2, 'two resets mid-stream');
  t.ok(retries.length >= 2, `retried (${retries.length})`);
  t.equal(started, 1, 'one started event');
  t.equal(out, Array.from({ length: N }, (_, i) => `line${i + 1}\n`).join(''), 'stdout: every line once');
  t.equal(err, Array.from({ length: N }, (_, i) => `err${i + 1}\n`).join(''), 'stderr: every line once');
  t.match(last, { type: 'exit', exitCode: 6 });
  const execs = await client.execsList('reset');
  t.equal(execs.execs.length, 1, 'one process');
});

t.test('binary exec (WebSocket) reset mid-output: it reconnects with its requestId and offsets', async (t) => {
  const { proxy, client } = await behindProxy(t, 'binreset');
  const N = 30;
  const script = `i=0; while [ $i -lt ${N} ]; do i=$((i+1)); echo line$i; sleep 0.05; done; exit 9`;
  let out = '';
  let resets = 0;
  let last: unknown;
  for await (const e of client.execBinary('binreset', { command: script }, { resume: { timeoutMs: 10_000 } })) {
    if (e.type === 'stdout') {
      out += e.data.toString();
      if (out.length > 40 && resets === 0) {
        resets++;
        proxy.resetAll();
      }
    } else last = e;
  }
  t.equal(resets, 1);
  t.equal(out, Array.from({ length: N }, (_, i) => `line${i + 1}\n`).join(''), 'every line once');
  t.match(last, { type: 'exit', exitCode: 9 });
  t.equal((await client.execsList('binreset')).execs.length, 1, 'one process');
});

t.test('openWebSocket: pings keep a silent exec alive; a black-holed one closes within the idle timeout', async (t) => {
  const { proxy, client } = await behindProxy(t, 'ws');
  const run = (command: string) => {
    const ws = client.openWebSocket(client.execUrl('ws', { command }));
    t.teardown(() => ws.terminate());
    ws.on('error', () => undefined);
    let out = '';
    const first = new Promise<void>((resolve) =>
      ws.on('message', (d: Buffer) => {
        if (d[0] === 1) {
          out += d.subarray(1).toString();
          resolve();
        }
      }),
    );
    const closed = new Promise<number>((resolve) => ws.once('close', (code: number) => resolve(code)));
    return { first, closed, out: () => out };
  };
  const quiet = run('sleep 2.5; echo done');
  t.equal(await quiet.closed, 1000, '2.5 s of silence with a 1 s idle timeout: pings kept it open to a normal close');
  t.equal(quiet.out(), 'done\n', 'a command string runs through sh -c');

  const holed = run('echo go; exec sleep 30');
  await holed.first;
  const holedAt = Date.now();
  proxy.blackhole();
  t.equal(await holed.closed, 1006, 'terminated, no close handshake');
  const after = Date.now() - holedAt;
  t.ok(after < 1000 + 2000, `closed ${after} ms after the connection went silent`);
});

import { once } from 'node:events';
import t from 'tap';
import WebSocket from 'ws';
import { join } from 'node:path';
import { goneInSandbox } from '../helpers/exec.js';
import { api, startGateway, waitForPhase, type Teardown } from '../helpers/gateway.js';
import { frozenSandbox } from '../helpers/sandbox.js';
import { startTcpProxy } from '../helpers/tcp-proxy.js';

t.test('interactive exec over WebSocket with a tty: input, output, resize, exit code', async (t) => {
  const gw = await startGateway(t);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'tty' });
  await waitForPhase(gw.app, 'tty', 'Ready');
  const ws = new WebSocket(`${gw.url.replace(/^http/, 'ws')}/v1/sandboxes/tty/exec?command=sh&tty=true&cols=80&rows=24`);
  t.teardown(() => ws.terminate());
  await once(ws, 'open');
  let output = '';
  let status: Record<string, unknown> | undefined;
  const closed = once(ws, 'close');
  const waitFor = (pattern: RegExp) =>
    new Promise<void>((resolve) => {
      const check = () => {
        if (pattern.test(output)) {
          ws.off('message', check);
          resolve();
        }
      };
      ws.on('message', check);
      check();
    });
  ws.on('message', (data: Buffer) => {
    if (data[0] === 1 || data[0] === 2) output += data.subarray(1).toString();
    if (data[0] === 3) status = JSON.parse(data.subarray(1).toString()) as Record<string, unknown>;
  });
  const send = (channel: number, payload: string) => ws.send(Buffer.concat([Buffer.from([channel]), Buffer.from(payload)]));
  send(0, 'echo $((6*7))\n');
  // The tty may echo the typed line before the shell prints its prompt, so 42 can follow "# ".
  await waitFor(/42\r?\n/);
  t.pass('read 42');
  send(4, JSON.stringify({ Width: 120, Height: 40 }));
  send(0, 'stty size\n');
  await waitFor(/40 120/);
  t.pass('resize reached the pty');
  send(0, 'exit 5\n');
  const [code] = (await closed) as [number];
  t.equal(code, 1000);
  t.match(status, { status: 'Failure', exitCode: 5 });
});

t.test('interactive exec without a tty: stdin end, separate stderr, success status', async (t) => {
  const gw = await startGateway(t);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'pipe' });
  await waitForPhase(gw.app, 'pipe', 'Ready');
  const url = `${gw.url.replace(/^http/, 'ws')}/v1/sandboxes/pipe/exec?command=sh&command=-c&command=${encodeURIComponent('cat; echo done $GREETING >&2')}&env=GREETING=hey`;
  const ws = new WebSocket(url);
  t.teardown(() => ws.terminate());
  await once(ws, 'open');
  let stdout = '';
  let stderr = '';
  let status: Record<string, unknown> | undefined;
  ws.on('message', (data: Buffer) => {
    if (data[0] === 1) stdout += data.subarray(1).toString();
    if (data[0] === 2) stderr += data.subarray(1).toString();
    if (data[0] === 3) status = JSON.parse(data.subarray(1).toString()) as Record<string, unknown>;
  });
  ws.send(Buffer.concat([Buffer.from([0]), Buffer.from('hello\n')]));
  ws.send(Buffer.from([0]));
  await once(ws, 'close');
  t.equal(stdout, 'hello\n');
  t.equal(stderr, 'done hey\n', 'env from the query reached the process');
  t.match(status, { status: 'Success', exitCode: 0 });
});

t.test('interactive exec applies backpressure: a caller that stops reading stops the process, nothing is lost', async (t) => {
  const gw = await startGateway(t);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'slow' });
  await waitForPhase(gw.app, 'slow', 'Ready');
  const CHUNKS = 2048; // 64 KiB each: 128 MiB in all
  // Inside the sandbox (a confined one sees none of the host's files).
  const counter = '/tmp/progress';
  const script = `i=0; while [ $i -lt ${CHUNKS} ]; do head -c 65536 /dev/zero || exit 1; i=$((i+1)); echo $i > ${counter}; done`;
  const ws = new WebSocket(`${gw.url.replace(/^http/, 'ws')}/v1/sandboxes/slow/exec?command=sh&command=-c&command=${encodeURIComponent(script)}`);
  t.teardown(() => ws.terminate());
  let stdoutBytes = 0;
  let status: Record<string, unknown> | undefined;
  ws.on('message', (data: Buffer) => {
    if (data[0] === 1) stdoutBytes += data.length - 1;
    if (data[0] === 3) status = JSON.parse(data.subarray(1).toString()) as Record<string, unknown>;
  });
  await once(ws, 'open');
  ws.pause(); // stop reading: the socket's receive buffer fills, then the gateway's send buffer
  const progress = async (): Promise<number> => {
    const r = await api<{ stdout: string }>(gw.url, 'POST', '/v1/sandboxes/slow/exec', { command: `cat ${counter} 2>/dev/null || echo 0` }, { accept: 'application/json' });
    return Number(r.body.stdout.trim());
  };
  // Wait until the writer stalls: the same count twice, 500 ms apart, or the writer is done.
  let last = -1;
  let now = await progress();
  const deadline = Date.now() + 20_000;
  while ((now !== last || now === 0) && now < CHUNKS && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 500));
    last = now;
    now = await progress();
  }
  t.ok(now < CHUNKS / 2, `the process stalled after ${now} of ${CHUNKS} chunks while the caller did not read`);
  const closed = once(ws, 'close');
  ws.resume();
  await closed;
  t.equal(stdoutBytes, CHUNKS * 65536, 'every byte arrived once the caller read again');
  t.match(status, { status: 'Success', exitCode: 0 });
});

const MIB = 1024 * 1024;

/** Opens an interactive exec and collects its stdout text. */
async function openExec(t: Teardown, url: string, name: string, argv: string[]) {
  const query = argv.map((a) => `command=${encodeURIComponent(a)}`).join('&');
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/v1/sandboxes/${name}/exec?${query}`);
  t.teardown(() => ws.terminate());
  let stdout = '';
  ws.on('message', (data: Buffer) => {
    if (data[0] === 1) stdout += data.subarray(1).toString();
  });
  await once(ws, 'open');
  return { ws, stdout: () => stdout };
}

/**
 * Sends `mib` 1 MiB stdin frames at once, then waits until the caller's send
 * buffer stops shrinking (the gateway stopped taking stdin); resolves with what is still held.
 */
async function floodStdin(ws: WebSocket, mib: number, settleMs: number): Promise<number> {
  const frame = Buffer.alloc(MIB + 1, 0x61);
  frame[0] = 0;
  for (let i = 0; i < mib; i++) ws.send(frame);
  let last = -1;
  const deadline = Date.now() + 20_000;
  while (ws.bufferedAmount !== last && ws.bufferedAmount > 0 && Date.now() < deadline) {
    last = ws.bufferedAmount;
    await new Promise((r) => setTimeout(r, settleMs));
  }
  return ws.bufferedAmount;
}

t.test('interactive exec applies backpressure to stdin: a process that does not read stops the caller, nothing is lost', async (t) => {
  const gw = await startGateway(t);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'gate' });
  await waitForPhase(gw.app, 'gate', 'Ready');
  const gate = '/tmp/gate';
  const { ws, stdout } = await openExec(t, gw.url, 'gate', ['sh', '-c', `while [ ! -e ${gate} ]; do sleep 0.05; done; wc -c`]);
  const TOTAL = 64;
  const held = await floodStdin(ws, TOTAL, 500);
  t.ok(held > (TOTAL / 4) * MIB, `the caller still holds ${Math.round(held / MIB)} MiB while the process does not read`);
  const closed = once(ws, 'close');
  await api(gw.url, 'POST', '/v1/sandboxes/gate/exec', { command: ['touch', gate] }, { accept: 'application/json' });
  ws.send(Buffer.from([0])); // end of input
  await closed;
  t.equal(stdout().trim(), String(TOTAL * MIB), 'the process read every byte');
});

t.test('interactive exec: a caller that goes silent (black-holed) is dropped within the keepalive timeout and its process group killed', async (t) => {
  const KEEPALIVE = { keepaliveIntervalMs: 500, keepaliveTimeoutMs: 1500 };
  const gw = await startGateway(t, KEEPALIVE);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'silent' });
  await waitForPhase(gw.app, 'silent', 'Ready');
  const port = Number(new URL(gw.url).port);
  const proxy = await startTcpProxy({ host: '127.0.0.1', port });
  t.teardown(() => proxy.close());
  const script = 'echo $$; exec sleep 30';
  const ws = new WebSocket(`ws://127.0.0.1:${proxy.port}/v1/sandboxes/silent/exec?command=sh&command=-c&command=${encodeURIComponent(script)}`);
  t.teardown(() => ws.terminate());
  ws.on('error', () => undefined);
  const [first] = (await once(ws, 'message')) as [Buffer];
  t.equal(first[0], 1, 'stdout');
  const pid = Number(first.subarray(1).toString().trim());
  t.ok(pid > 0, `the process runs as ${pid}`);
  const holedAt = Date.now();
  proxy.blackhole();
  const gone = await goneInSandbox(gw.url, 'silent', [pid], KEEPALIVE.keepaliveTimeoutMs + 3000);
  t.ok(gone, `the process group was killed ${Date.now() - holedAt} ms after the caller went silent`);
});

t.test('interactive exec: stdin sent before the exec has started waits in the kernel, not in the gateway', async (t) => {
  const gw = await startGateway(t);
  // A stopped supervisor cannot answer the relay open: the exec stays "starting".
  const box = await frozenSandbox(t, gw, 'early');
  const { ws, stdout } = await openExec(t, gw.url, 'early', ['wc', '-c']);
  const TOTAL = 64;
  const held = await floodStdin(ws, TOTAL, 300);
  t.ok(held > (TOTAL / 4) * MIB, `the caller still holds ${Math.round(held / MIB)} MiB while the exec has not started`);
  const closed = once(ws, 'close');
  const t0 = Date.now();
  box.resume();
  ws.send(Buffer.from([0])); // end of input
  await closed;
  // A gateway that stopped reading the caller would leave the close handshake to ws's 30 s timer.
  t.ok(Date.now() - t0 < 10_000, `the close handshake completed (${Date.now() - t0} ms), it did not time out`);
  t.equal(stdout().trim(), String(TOTAL * MIB), 'every byte reached the process once it started');
});

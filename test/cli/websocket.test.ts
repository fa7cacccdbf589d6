import { once } from 'node:events';
import type { IncomingMessage } from 'node:http';
import t, { type Test } from 'tap';
import { WebSocketServer, type WebSocket } from 'ws';
import { cli } from './helpers.js';

t.setTimeout(60_000);

/** A stand-in gateway WebSocket endpoint; `onConnection` plays the server side. */
async function fakeGateway(t: Test, onConnection: (ws: WebSocket, req: IncomingMessage) => void): Promise<string> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
  await once(wss, 'listening');
  wss.on('connection', onConnection);
  t.teardown(() => {
    for (const c of wss.clients) c.terminate();
    wss.close();
  });
  return `http://127.0.0.1:${(wss.address() as { port: number }).port}`;
}

const frame = (channel: number, data: string | Buffer) => Buffer.concat([Buffer.of(channel), Buffer.from(data)]);

t.test('exec -t: channel frames both ways, end-of-input, status exit code', async (t) => {
  const received: Buffer[] = [];
  let url: URL | undefined;
  const gateway = await fakeGateway(t, (ws, req) => {
    url = new URL(req.url ?? '/', 'http://x');
    // Output and status right away, before the client has sent anything.
    ws.send(frame(1, 'hello '), { binary: true });
    ws.send(frame(2, 'warn\n'), { binary: true });
    ws.on('message', (data: Buffer) => {
      received.push(data);
      if (data.length === 1 && data[0] === 0) {
        ws.send(frame(1, 'world\n'), { binary: true });
        ws.send(frame(3, JSON.stringify({ metadata: {}, status: 'Failure', reason: 'NonZeroExitCode', exitCode: 3, signal: null })), { binary: true });
        ws.close(1000, 'exit');
      }
    });
  });
  const res = await cli(['sandbox', 'exec', 'box', '-t', '--workdir', '/w', '--gateway', gateway, '--', 'sh', '-c', 'read x'], { stdin: 'typed\n' });
  t.equal(res.code, 3, res.stderr);
  t.equal(res.stdout, 'hello world\n');
  t.equal(res.stderr, 'warn\n');
  t.equal(url?.pathname, '/v1/sandboxes/box/exec');
  t.same(url?.searchParams.getAll('command'), ['sh', '-c', 'read x']);
  t.equal(url?.searchParams.get('tty'), 'true');
  t.equal(url?.searchParams.get('workdir'), '/w');
  t.same(received.map((b) => [...b]), [[...frame(0, 'typed\n')], [0]], 'stdin, then an empty stdin frame for EOF');
});

t.test('exec -t: failure status and signals', async (t) => {
  const statusFor: Record<string, object> = {
    notfound: { status: 'Failure', reason: 'SANDBOX_NOT_FOUND', message: 'sandbox "notfound" not found' },
    signalled: { status: 'Failure', exitCode: null, signal: 'SIGTERM' },
    timeout: { status: 'Failure', exitCode: 124, signal: 'SIGTERM', timedOut: true },
    k8s: { status: 'Failure', details: { causes: [{ reason: 'ExitCode', message: '42' }] } },
  };
  const gateway = await fakeGateway(t, (ws, req) => {
    const name = (req.url ?? '').split('/')[3];
    ws.send(frame(3, JSON.stringify({ metadata: {}, ...statusFor[name] })), { binary: true });
    ws.close(name === 'notfound' ? 4404 : 1000, name === 'notfound' ? 'SANDBOX_NOT_FOUND' : 'exit');
  });
  const run = (name: string) => cli(['sandbox', 'exec', name, '-t', '--gateway', gateway, '--', 'true']);
  const notFound = await run('notfound');
  t.equal(notFound.code, 255);
  t.equal(notFound.stderr, 'openshell: exec failed: sandbox "notfound" not found (SANDBOX_NOT_FOUND)\n');
  t.equal((await run('signalled')).code, 128 + 15);
  t.equal((await run('timeout')).code, 124);
  t.equal((await run('k8s')).code, 42);
});

t.test('exec -t: a refused upgrade shows the error envelope', async (t) => {
  const { createServer } = await import('node:http');
  const server = createServer((_req, res) => res.end());
  server.on('upgrade', (_req, socket) => {
    const body = JSON.stringify({ error: { code: 'UNAUTHENTICATED', message: 'missing or invalid bearer token' } });
    socket.end(`HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  const res = await cli(['sandbox', 'exec', 'box', '-t', '--gateway', `http://127.0.0.1:${(server.address() as { port: number }).port}`, '--', 'true']);
  t.equal(res.code, 1);
  t.equal(res.stderr, 'openshell: missing or invalid bearer token (UNAUTHENTICATED)\n');
});

t.test('ssh-proxy: bytes both ways, bearer token on the upgrade', async (t) => {
  let auth: string | undefined;
  let path: string | undefined;
  const gateway = await fakeGateway(t, (ws, req) => {
    auth = req.headers.authorization;
    path = req.url;
    ws.send(Buffer.from('SSH-2.0-fake\r\n'), { binary: true }); // the server speaks first
    const got: Buffer[] = [];
    ws.on('message', (data: Buffer) => {
      got.push(data);
      if (Buffer.concat(got).toString().endsWith('bye\n')) {
        ws.send(Buffer.concat([Buffer.from('echo:'), Buffer.concat(got)]), { binary: true });
        ws.close(1000);
      }
    });
  });
  const res = await cli(['ssh-proxy', 'box', '--gateway', gateway], { stdin: 'SSH-2.0-client\r\nbye\n', env: { OPENSHELL_AUTH_TOKEN: 'tkn' } });
  t.equal(res.code, 0, res.stderr);
  t.equal(res.stdout, 'SSH-2.0-fake\r\necho:SSH-2.0-client\r\nbye\n');
  t.equal(auth, 'Bearer tkn');
  t.equal(path, '/v1/sandboxes/box/ssh');
});

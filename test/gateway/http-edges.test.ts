import { once } from 'node:events';
import http from 'node:http';
import { connect } from 'node:net';
import t from 'tap';
import { api, startGateway } from '../helpers/gateway.js';

interface Envelope {
  error: { code: string; message: string };
}

t.test('an oversized body gets the 413 envelope, also by a client still writing it (no reset)', async (t) => {
  const gw = await startGateway(t);
  const { port } = new URL(gw.url);
  // A client that writes all of an 11 MiB body before it looks at the answer (as fetch does).
  const size = 11 * 1024 * 1024;
  for (let i = 0; i < 3; i++) {
    const sock = connect(Number(port), '127.0.0.1');
    t.teardown(() => sock.destroy());
    await once(sock, 'connect');
    let answer = '';
    let failed: string | undefined;
    sock.setEncoding('latin1');
    sock.on('data', (c: string) => (answer += c));
    sock.on('error', (err: NodeJS.ErrnoException) => (failed ??= err.code ?? err.message));
    const closed = once(sock, 'close');
    sock.write(`POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${size}\r\n\r\n`);
    const chunk = Buffer.alloc(64 * 1024, 0x20);
    for (let sent = 0; sent < size && !failed && !sock.destroyed; sent += chunk.length) {
      if (!sock.write(chunk)) await Promise.race([once(sock, 'drain'), closed]).catch(() => undefined);
    }
    if (!failed && !sock.destroyed) sock.end();
    await closed;
    t.equal(failed, undefined, `attempt ${i}: the whole body written, no EPIPE or reset`);
    t.match(answer, /^HTTP\/1\.1 413 /, 'the 413');
    t.match(answer, /"code":"PAYLOAD_TOO_LARGE"/);
  }
  t.equal((await api(gw.url, 'GET', '/healthz')).status, 200, 'still serving');
});

t.test('an empty body with Content-Type: application/json is no body, where a route takes none', async (t) => {
  const gw = await startGateway(t);
  t.equal((await api(gw.url, 'POST', '/v1/sandboxes', { name: 'gone' })).status, 201);
  const del = await fetch(`${gw.url}/v1/sandboxes/gone`, {
    method: 'DELETE',
    headers: { 'content-type': 'application/json' },
    signal: AbortSignal.timeout(10_000),
  });
  t.equal(del.status, 200, 'DELETE with the header and no body');
  t.equal(((await del.json()) as { phase: string }).phase, 'Deleting');
  const get = await fetch(`${gw.url}/v1/sandboxes`, { headers: { 'content-type': 'application/json' } });
  t.equal(get.status, 200, 'GET with the header');
  const empty = await fetch(`${gw.url}/v1/sandboxes/gone/policy`, {
    method: 'PUT',
    headers: { 'content-type': 'application/json' },
    signal: AbortSignal.timeout(10_000),
  });
  t.equal(empty.status, 400, 'a route that takes a body still says it is missing');
  t.match(((await empty.json()) as Envelope).error, { code: 'INVALID_ARGUMENT', message: /empty JSON body/ });
  t.equal((await api<{ policy: unknown }>(gw.url, 'GET', '/v1/sandboxes/gone/policy')).status, 200);
  const bad = await api<Envelope>(gw.url, 'DELETE', '/v1/sandboxes/gone', '{"x":');
  t.equal(bad.status, 400, 'a body that is there is still parsed');
});

t.test('a refused WebSocket upgrade says Connection: close and the keep-alive client carries on', async (t) => {
  const gw = await startGateway(t);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const { port } = new URL(gw.url);
  const request = (path: string, headers: Record<string, string>) =>
    new Promise<{ status: number; connection: string | undefined; body: string }>((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port, path, agent, headers, timeout: 10_000 }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, connection: res.headers.connection, body }));
      });
      req.on('error', reject);
      req.on('timeout', () => req.destroy(new Error('timeout')));
    });
  const upgrade = {
    connection: 'Upgrade',
    upgrade: 'websocket',
    'sec-websocket-version': '13',
    'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==',
    authorization: 'Bearer not-a-token',
  };
  for (let i = 0; i < 3; i++) {
    const refused = await request('/v1/supervisor/session', upgrade);
    t.equal(refused.status, 401);
    t.equal(refused.connection, 'close', 'the refusal closes the connection');
    t.equal((JSON.parse(refused.body) as Envelope).error.code, 'UNAUTHENTICATED');
    const next = await request('/healthz', {});
    t.equal(next.status, 200, `request ${i} after a refused upgrade works`);
  }
});

import { once } from 'node:events';
import { createServer } from 'node:http';
import type { Duplex } from 'node:stream';
import t from 'tap';
import { silentLogger } from '../../src/log.js';
import { ControlClient } from '../../src/supervisor/control-client.js';

/** A server that refuses every session upgrade with `status` and `body`; counts the dials. */
async function refusing(t: { teardown(fn: () => unknown): void }, status: number, body: string) {
  const server = createServer();
  const seen = { dials: 0 };
  let next: (() => void) | undefined;
  server.on('upgrade', (_req, socket: Duplex) => {
    seen.dials++;
    socket.on('error', () => undefined); // the client may reset once it has the answer
    socket.end(`HTTP/1.1 ${status} No\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    next?.();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  const dialed = (n: number) => new Promise<void>((resolve) => (next = () => seen.dials >= n && resolve()));
  return { url: `http://127.0.0.1:${(server.address() as { port: number }).port}`, seen, dialed };
}

function client(endpoint: string, onUnknown: (status: number) => void): ControlClient {
  return new ControlClient({
    endpoint,
    sandboxId: 'sbx_x',
    token: 'ost_x',
    version: 'test',
    capabilities: [],
    log: silentLogger,
    onWelcome: () => undefined,
    onMessage: () => undefined,
    onUnknown,
  });
}

t.test("the gateway's own 401 for an unknown token stops the client", async (t) => {
  const gw = await refusing(t, 401, JSON.stringify({ error: { code: 'UNAUTHENTICATED', message: 'a valid sandbox token is required' } }));
  const unknown = new Promise<number>((resolve) => {
    const d = client(gw.url, resolve);
    t.teardown(() => d.close());
    d.start();
  });
  t.equal(await unknown, 401, 'told once, with the status');
  const dials = gw.seen.dials;
  // The backoff would have redialed within 200 ms: give it twice that.
  await new Promise((r) => setTimeout(r, 400));
  t.equal(gw.seen.dials, dials, 'and it does not dial again');
});

t.test('a 404 or 401 that is not the gateway envelope is retried', async (t) => {
  for (const [status, body] of [[404, '<html>not found</html>'], [401, '{"message":"proxy auth"}']] as const) {
    const gw = await refusing(t, status, body);
    let told = false;
    const c = client(gw.url, () => (told = true));
    t.teardown(() => c.close());
    const thrice = gw.dialed(3);
    c.start();
    await thrice;
    c.close();
    t.notOk(told, `${status} ${body}: dialed ${gw.seen.dials} times, never told unknown`);
  }
});

import { once } from 'node:events';
import http2 from 'node:http2';
import t from 'tap';
import WebSocket from 'ws';
import { startGateway, tempDir, waitForPhase } from '../helpers/gateway.js';
import { selfSignedCert } from '../helpers/tls.js';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

async function h2get(url: string, path: string, ca?: Buffer): Promise<{ status: number; body: string }> {
  const session = http2.connect(url, ca ? { ca, servername: 'localhost' } : {});
  try {
    const req = session.request({ ':path': path });
    const [headers] = (await once(req, 'response')) as [http2.IncomingHttpHeaders];
    let body = '';
    req.setEncoding('utf8');
    for await (const chunk of req) body += chunk as string;
    return { status: Number(headers[':status']), body };
  } finally {
    session.close();
  }
}

async function wsUpgrade(url: string, ca?: Buffer): Promise<number> {
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/v1/supervisor/session`, ca ? { ca } : {});
  ws.on('error', () => undefined);
  const [, res] = (await once(ws, 'unexpected-response')) as [unknown, { statusCode: number; resume(): void }];
  res.resume();
  return res.statusCode;
}

t.test('h2c and an HTTP/1.1 WebSocket upgrade on the same cleartext port', async (t) => {
  const gw = await startGateway(t);
  const h2 = await h2get(gw.url, '/healthz');
  t.equal(h2.status, 200);
  t.same(JSON.parse(h2.body), { status: 'ok' });
  const list = await h2get(gw.url, '/v1/sandboxes');
  t.same(JSON.parse(list.body), { sandboxes: [] });
  t.equal(await wsUpgrade(gw.url), 401, 'the upgrade reached the WebSocket route (and its auth)');
  t.equal((await fetch(`${gw.url}/healthz`)).status, 200, 'HTTP/1.1 too');
});

t.test('h2 (ALPN) and HTTP/1.1 upgrade over TLS with a self-signed cert', async (t) => {
  const dir = tempDir(t);
  const { cert, key } = selfSignedCert();
  writeFileSync(join(dir, 'cert.pem'), cert);
  writeFileSync(join(dir, 'key.pem'), key);
  const gw = await startGateway(t, { tlsCert: join(dir, 'cert.pem'), tlsKey: join(dir, 'key.pem') });
  t.match(gw.url, /^https:/);
  const h2 = await h2get(gw.url, '/healthz', cert);
  t.equal(h2.status, 200);
  t.equal(await wsUpgrade(gw.url, cert), 401);
  // Supervisors dial back over wss and trust the gateway's certificate.
  await gw.app.openshell.sandboxes.create({ name: 'secure' });
  const ready = await waitForPhase(gw.app, 'secure', 'Ready');
  t.equal(ready.conditions[0].reason, 'SupervisorConnected');
});

import { once } from 'node:events';
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer as createNetServer, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import WebSocket, { WebSocketServer } from 'ws';
import type { ExecResult } from '../../src/schemas/sandbox.js';
import { api, startGateway, waitForPhase, type Teardown } from '../helpers/gateway.js';

/** An HTTP server whose WebSocket endpoint sends `first` at once and echoes `echo:<msg>`; POST echoes the body. */
async function wsServer(t: Teardown): Promise<number> {
  const http = createHttpServer((req, res) => req.pipe(res));
  const wss = new WebSocketServer({ server: http });
  wss.on('connection', (ws) => {
    ws.send('first');
    ws.on('message', (m) => ws.send(`echo:${m.toString()}`));
  });
  http.listen(0, '127.0.0.1');
  await once(http, 'listening');
  t.teardown(() => {
    for (const c of wss.clients) c.terminate();
    wss.close();
    http.close();
  });
  return (http.address() as { port: number }).port;
}

/** A client text frame (masked, as RFC 6455 requires of clients), written by hand. */
function clientFrame(text: string): Buffer {
  const payload = Buffer.from(text);
  const mask = Buffer.from([1, 2, 3, 4]);
  const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]));
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked]);
}

class RawClient {
  buf = Buffer.alloc(0);
  constructor(readonly sock: Socket) {
    sock.on('data', (c: Buffer) => (this.buf = Buffer.concat([this.buf, c])));
  }
  async until(text: string, timeoutMs = 5000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (!this.buf.includes(text)) {
      if (Date.now() > deadline) throw new Error(`no "${text}" in ${JSON.stringify(this.buf.toString('latin1'))}`);
      await Promise.race([once(this.sock, 'data'), sleep(100)]);
    }
    return this.buf.toString('latin1');
  }
}

const UPGRADE_HEADERS =
  'Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n';

/** Raw bytes through the proxy: CONNECT (tunnel) or an absolute-URI upgrade request (forward). */
async function rawWebSocket(proxy: URL, port: number, door: 'connect' | 'forward'): Promise<RawClient> {
  const sock = connect(Number(proxy.port), proxy.hostname);
  await once(sock, 'connect');
  const raw = new RawClient(sock);
  if (door === 'connect') {
    sock.write(`CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
    await raw.until('\r\n\r\n');
    if (!raw.buf.toString().startsWith('HTTP/1.1 200')) throw new Error(raw.buf.toString());
    raw.buf = Buffer.alloc(0);
    sock.write(`GET / HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${UPGRADE_HEADERS}`);
  } else {
    sock.write(`GET http://127.0.0.1:${port}/ HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${UPGRADE_HEADERS}`);
  }
  return raw;
}

t.test('WebSocket regression through a real sandbox proxy: both doors, L4 and rest, raw and ws, idle', async (t) => {
  const l4Port = await wsServer(t);
  const restPort = await wsServer(t);
  // A server that answers 101 to a request that never asked to upgrade.
  const rogue = createNetServer((s) => {
    s.once('data', () => s.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\nsurprise'));
    s.on('error', () => undefined);
  });
  rogue.listen(0, '127.0.0.1');
  await once(rogue, 'listening');
  t.teardown(() => rogue.close());
  const roguePort = (rogue.address() as { port: number }).port;

  const gw = await startGateway(t);
  const policy = {
    version: 1,
    network_policies: {
      plain: { endpoints: [{ host: '127.0.0.1', port: l4Port }] },
      api: {
        endpoints: [
          { host: '127.0.0.1', port: restPort, protocol: 'rest', access: 'full' },
          { host: '127.0.0.1', port: roguePort, protocol: 'rest', access: 'full' },
        ],
      },
    },
  };
  await api(gw.url, 'POST', '/v1/sandboxes', {
    name: 'wsnet',
    policy,
    env: { OPENSHELL_EGRESS_IDLE_TIMEOUT_MS: '500' },
  });
  await waitForPhase(gw.app, 'wsnet', 'Ready');
  const exec = async (command: string) => {
    const res = await fetch(`${gw.url}/v1/sandboxes/wsnet/exec`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify({ command }),
    });
    return (await res.json()) as ExecResult;
  };
  const proxy = new URL((await exec('echo $HTTP_PROXY')).stdout.trim());

  for (const [door, port, kind] of [
    ['connect', l4Port, 'L4'],
    ['connect', restPort, 'rest'],
    ['forward', restPort, 'rest'],
  ] as const) {
    const raw = await rawWebSocket(proxy, port, door);
    t.teardown(() => raw.sock.destroy());
    const head = await raw.until('first');
    t.match(head, /^HTTP\/1\.1 101/, `${door} ${kind}: the 101 and the first frame after it`);
    await sleep(3000); // the quiet spell of the original bug report
    raw.sock.write(clientFrame('after-quiet'));
    await raw.until('echo:after-quiet');
    t.pass(`${door} ${kind}: echo after a 3 s quiet spell`);
  }

  // The ws client library through a CONNECT tunnel of the sandbox's proxy.
  const tunnel = connect(Number(proxy.port), proxy.hostname);
  await once(tunnel, 'connect');
  tunnel.write(`CONNECT 127.0.0.1:${restPort} HTTP/1.1\r\nHost: 127.0.0.1:${restPort}\r\n\r\n`);
  const [established] = (await once(tunnel, 'data')) as [Buffer];
  t.match(established.toString(), /^HTTP\/1\.1 200/);
  const ws = new WebSocket(`ws://127.0.0.1:${restPort}/`, { createConnection: () => tunnel });
  t.teardown(() => ws.terminate());
  const [first] = (await once(ws, 'message')) as [Buffer];
  t.equal(first.toString(), 'first', 'ws library: first frame');
  // Idle far longer than the proxy's HTTP idle timeout (500 ms here): upgraded pairs have none.
  await sleep(1500);
  ws.send('still-here');
  const [echo] = (await once(ws, 'message')) as [Buffer];
  t.equal(echo.toString(), 'echo:still-here', 'a WebSocket idle past the HTTP idle timeout still works');

  // Forward door, idle past the timeout as well.
  const fwd = await rawWebSocket(proxy, restPort, 'forward');
  t.teardown(() => fwd.sock.destroy());
  await fwd.until('first');
  await sleep(1500);
  fwd.sock.write(clientFrame('late'));
  await fwd.until('echo:late');
  t.pass('forward-door WebSocket idle past the HTTP idle timeout still works');

  const rogueStatus = await exec(`curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:${roguePort}/`);
  t.equal(rogueStatus.stdout, '502', 'an unsolicited 101 is a protocol error');
  const cont = await exec(`curl -s -H 'Expect: 100-continue' --data-binary 'body-after-continue' http://127.0.0.1:${restPort}/`);
  t.equal(cont.stdout, 'body-after-continue', '100 Continue still works');
});

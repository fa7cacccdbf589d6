import t, { type Test } from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { setTimeout as delay } from 'node:timers/promises';
import WebSocket from 'ws';
import {
  WS_UPGRADE_HEADERS,
  connectVia,
  dial,
  onePolicy,
  portOf,
  readWsFrame,
  startProxy,
  startWs,
  within,
  wsFrame,
  type Bytes,
} from './fixtures/helpers.js';

// The regression this file exists for: after a 101 the proxy must stop
// parsing HTTP and pipe raw bytes, including frames that arrive in the same
// read as the 101, with no idle timer on the upgraded pair.

type Door = 'connect' | 'forward';
type Mode = 'L4' | 'rest';
const HOST = 'ws.example.test';

function policyFor(port: number, mode: Mode) {
  return onePolicy(mode === 'rest' ? { host: HOST, port, protocol: 'rest', access: 'read-only' } : { host: HOST, port });
}

/** Raw client: returns the reader positioned just after the 101 head. */
async function rawUpgrade(t: Test, door: Door, proxyPort: number, wsPort: number): Promise<{ sock: net.Socket; bytes: Bytes }> {
  const authority = `${HOST}:${wsPort}`;
  let conn: { sock: net.Socket; bytes: Bytes };
  let target: string;
  if (door === 'connect') {
    conn = await dial(t, proxyPort);
    conn.sock.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
    const head = await conn.bytes.until('\r\n\r\n');
    t.match(head, /^HTTP\/1\.1 200 /, 'tunnel established');
    target = '/ws';
  } else {
    conn = await dial(t, proxyPort);
    target = `http://${authority}/ws`;
  }
  conn.sock.write(`GET ${target} HTTP/1.1\r\nHost: ${authority}\r\n${WS_UPGRADE_HEADERS}\r\n`);
  const head = await conn.bytes.until('\r\n\r\n');
  t.match(head, /^HTTP\/1\.1 101 /, '101 forwarded');
  return conn;
}

for (const door of ['connect', 'forward'] as const) {
  for (const mode of ['L4', 'rest'] as const) {
    t.test(`raw client, ${door}, ${mode}: 101 + first frame, echo after 3 s quiet`, async (t) => {
      const ws = await startWs(t);
      const { proxy, decisions } = await startProxy(t, policyFor(portOf(ws), mode));
      await within(10_000, (async () => {
        const { sock, bytes } = await rawUpgrade(t, door, proxy.port, portOf(ws));
        t.equal(await readWsFrame(bytes), 'hello', 'server frame sent right after the 101 arrives');
        await delay(3000); // the required quiet spell
        sock.write(wsFrame('ping-1'));
        t.equal(await readWsFrame(bytes), 'ping-1', 'echo after quiet spell');
        sock.write(wsFrame('ping-2'));
        t.equal(await readWsFrame(bytes), 'ping-2', 'still framing correctly');
      })());
      t.ok(decisions.some((d) => d.action === 'allow' && d.host === HOST));
    });
  }
}

/** CONNECT by hand, then give ws the bare tunnel socket. */
async function tunnelSocket(proxyPort: number, authority: string): Promise<net.Socket> {
  const sock = net.connect({ host: '127.0.0.1', port: proxyPort });
  sock.setNoDelay(true);
  await once(sock, 'connect');
  sock.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`);
  let acc = Buffer.alloc(0);
  for (;;) {
    const [chunk] = (await once(sock, 'data')) as [Buffer];
    acc = Buffer.concat([acc, chunk]);
    const i = acc.indexOf('\r\n\r\n');
    if (i < 0) continue;
    // No pause(): an explicitly paused socket stays paused when ws attaches its reader.
    if (!/^HTTP\/1\.1 200 /.test(acc.toString('latin1'))) throw new Error(`CONNECT refused: ${acc.toString()}`);
    if (i + 4 < acc.length) sock.unshift(acc.subarray(i + 4));
    return sock;
  }
}

function wsClient(door: Door, proxyPort: number, wsPort: number, tunnel: net.Socket | null): WebSocket {
  const url = `ws://${HOST}:${wsPort}/ws`;
  if (door === 'connect') return new WebSocket(url, { perMessageDeflate: false, createConnection: () => tunnel! });
  return new WebSocket(url, {
    perMessageDeflate: false,
    createConnection: () => net.connect({ host: '127.0.0.1', port: proxyPort }),
    // Ask the proxy with an absolute URI: rewrite the request target before the head is sent.
    finishRequest: (req) => {
      req.path = url.replace(/^ws:/, 'http:');
      req.end();
    },
  });
}

async function nextMessage(ws: WebSocket): Promise<string> {
  const [data] = (await once(ws, 'message')) as [Buffer];
  return data.toString();
}

for (const door of ['connect', 'forward'] as const) {
  for (const mode of ['L4', 'rest'] as const) {
    t.test(`ws library, ${door}, ${mode}`, async (t) => {
      const server = await startWs(t);
      const { proxy } = await startProxy(t, policyFor(portOf(server), mode));
      await within(10_000, (async () => {
        const tunnel = door === 'connect' ? await tunnelSocket(proxy.port, `${HOST}:${portOf(server)}`) : null;
        const ws = wsClient(door, proxy.port, portOf(server), tunnel);
        t.teardown(() => {
      ws.on('error', () => {});
      ws.terminate();
    });
        const hello = nextMessage(ws);
        await once(ws, 'open');
        t.equal(await hello, 'hello');
        for (let i = 0; i < 20; i++) {
          const m = nextMessage(ws);
          ws.send(`m${i}`);
          t.equal(await m, `m${i}`);
        }
        const big = Buffer.alloc(1 << 20, 7);
        const m = once(ws, 'message');
        ws.send(big);
        const [got] = (await m) as [Buffer];
        t.equal(got.length, big.length, '1 MiB binary message echoed');
      })());
    });
  }
}

t.test('an upgraded WebSocket outlives the HTTP idle timeout', async (t) => {
  const server = await startWs(t);
  const { proxy } = await startProxy(t, policyFor(portOf(server), 'rest'), { idleTimeoutMs: 500 });
  await within(10_000, (async () => {
    const ws = wsClient('forward', proxy.port, portOf(server), null);
    t.teardown(() => {
      ws.on('error', () => {});
      ws.terminate();
    });
    const hello = nextMessage(ws);
    await once(ws, 'open');
    t.equal(await hello, 'hello');
    const raw = await rawUpgrade(t, 'forward', proxy.port, portOf(server));
    t.equal(await readWsFrame(raw.bytes), 'hello');

    // A plain keep-alive connection is closed by the idle timer...
    const plain = await dial(t, proxy.port);
    plain.sock.write(`GET http://${HOST}:${portOf(server)}/x HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`);
    t.equal((await plain.bytes.response()).status, 200);
    const t0 = Date.now();
    await plain.bytes.closed();
    t.ok(Date.now() - t0 < 2500, 'idle keep-alive connection closed');

    await delay(1500); // three idle timeouts of quiet
    const m = nextMessage(ws);
    ws.send('still here');
    t.equal(await m, 'still here', 'ws library connection alive');
    raw.sock.write(wsFrame('raw too'));
    t.equal(await readWsFrame(raw.bytes), 'raw too', 'raw upgraded connection alive');
  })());
});

t.test('CONNECT tunnel to an L4 endpoint has no idle timeout', async (t) => {
  const server = await startWs(t);
  const { proxy } = await startProxy(t, policyFor(portOf(server), 'L4'), { idleTimeoutMs: 300 });
  await within(10_000, (async () => {
    const tun = await connectVia(t, proxy, `${HOST}:${portOf(server)}`);
    t.equal(tun.status, 200);
    await delay(1000);
    tun.sock.write(`GET /ws HTTP/1.1\r\nHost: ${HOST}\r\n${WS_UPGRADE_HEADERS}\r\n`);
    t.match(await tun.bytes.until('\r\n\r\n'), /^HTTP\/1\.1 101 /);
    t.equal(await readWsFrame(tun.bytes), 'hello');
  })());
});

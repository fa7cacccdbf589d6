import { once } from 'node:events';
import { createServer } from 'node:http';
import { connect } from 'node:net';
import t from 'tap';
import type { LogLine } from '../../src/protocol/control.js';
import { api, startGateway, waitForPhase } from '../helpers/gateway.js';

/** The supervisor's send interval for log lines (src/supervisor/supervisor.ts). */
const INTERVAL_MS = 200;

/** One request through a proxy on a new connection; resolves with the answer's status line once it is read. */
async function throughProxy(proxy: URL, url: string): Promise<string> {
  // Confined, the proxy is on the sandbox's veth peer; unconfined, on loopback.
  const sock = connect(Number(proxy.port), proxy.hostname);
  try {
    await once(sock, 'connect');
    sock.write(`GET ${url} HTTP/1.1\r\nHost: ${new URL(url).host}\r\nConnection: close\r\n\r\n`);
    const [chunk] = (await once(sock, 'data')) as [Buffer];
    return chunk.toString('latin1').split('\r\n')[0]!;
  } finally {
    sock.destroy();
  }
}

t.test('egress decisions reach the gateway within the send interval, an isolated one at once', async (t) => {
  const http = createServer((_req, res) => res.end('ok'));
  http.listen(0, '127.0.0.1');
  await once(http, 'listening');
  t.teardown(() => http.close());
  const port = (http.address() as { port: number }).port;
  const gw = await startGateway(t);
  const { logs, sandboxes } = gw.app.openshell;
  for (const name of ['one', 'two']) await api(gw.url, 'POST', '/v1/sandboxes', { name });
  await Promise.all(['one', 'two'].map((n) => waitForPhase(gw.app, n, 'Ready')));
  const ids = await Promise.all(['one', 'two'].map(async (n) => (await sandboxes.getRecord(n)).id));
  const proxyOf = (id: string) =>
    new Promise<URL>((resolve) => {
      const found = (l: LogLine) => l.message === 'egress proxy listening' && (stop(), resolve(new URL(String(l.fields?.url))));
      const stop = logs.follow(id, found);
      for (const l of logs.get(id)) found(l);
    });
  const proxies = await Promise.all(ids.map(proxyOf));
  const arrival = (id: string, path: string) =>
    new Promise<number>((resolve) => {
      const stop = logs.follow(id, (l) => {
        if ((l.fields?.decision as { path?: string } | undefined)?.path !== path) return;
        stop();
        resolve(Date.now());
      });
    });

  // A burst in both sandboxes: every decision of the second is at the gateway within the interval of the last.
  const paths = [0, 1, 2, 3].map((i) => `/burst${i}`);
  const seen = paths.map((p) => arrival(ids[1]!, p));
  await Promise.all(proxies.map(async (p) => { for (const path of paths) await throughProxy(p, `http://127.0.0.1:${port}${path}`); }));
  const answered = Date.now();
  const times = await Promise.all(seen);
  t.ok(Math.max(...times) - answered < 5 * INTERVAL_MS, `the burst's decisions arrived ${times.map((x) => x - answered).join(' ')} ms after the last answer`);

  // Isolated requests: the line goes out when it is made, not at the end of an interval.
  let prompt = 0;
  const lags: number[] = [];
  for (let i = 0; i < 5; i++) {
    // A quiet interval first: what the supervisor sent last is at least one interval old.
    await new Promise((r) => setTimeout(r, INTERVAL_MS + 50));
    const path = `/alone${i}`;
    const got = arrival(ids[1]!, path);
    t.match(await throughProxy(proxies[1]!, `http://127.0.0.1:${port}${path}`), / 403 /, 'denied: no policy');
    const answeredAt = Date.now();
    const lag = (await got) - answeredAt;
    lags.push(lag);
    if (lag < INTERVAL_MS / 2) prompt++;
  }
  t.ok(prompt >= 4, `at least 4 of 5 isolated decisions at the gateway within half an interval of their answer (lags ${lags.join(' ')} ms)`);
});

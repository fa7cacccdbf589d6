import { once } from 'node:events';
import t from 'tap';
import WebSocket from 'ws';
import { startGateway } from '../helpers/gateway.js';
import { frozenSandbox } from '../helpers/sandbox.js';

t.test('ssh WebSocket whose relay never opens: the caller gets an error close promptly, not after a close timeout', async (t) => {
  const gw = await startGateway(t);
  // A stopped supervisor never answers relayOpen: the pending relay expires (10 s).
  await frozenSandbox(t, gw, 'mute');
  const ws = new WebSocket(`${gw.url.replace(/^http/, 'ws')}/v1/sandboxes/mute/ssh`);
  t.teardown(() => ws.terminate());
  ws.on('error', () => undefined);
  await once(ws, 'open');
  ws.send(Buffer.from('SSH-2.0-test\r\n')); // the caller speaks first; the gateway holds it
  const t0 = Date.now();
  const [code, reason] = (await once(ws, 'close')) as [number, Buffer];
  const ms = Date.now() - t0;
  t.ok(code >= 4000, `closed with an error code (${code} ${reason.toString()})`);
  // The pending relay expires after 10 s; a gateway not reading the caller would add ws's 30 s close timeout.
  t.ok(ms < 20_000, `the close completed ${ms} ms after the request`);
});

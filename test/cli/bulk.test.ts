import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import type { IncomingMessage } from 'node:http';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { execStream } from '../helpers/exec.js';
import { api, startGateway, waitForPhase } from '../helpers/gateway.js';
import { startTcpProxy } from '../helpers/tcp-proxy.js';

t.setTimeout(240_000);
const bin = fileURLToPath(new URL('../../bin/openshell.js', import.meta.url));

t.test('binary transport: 512 MiB through the CLI hashed equal to the source, across a connection reset', async (t) => {
  const gw = await startGateway(t);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'bulk' });
  await waitForPhase(gw.app, 'bulk', 'Ready');
  // The source: 32 numbered copies of 16 MiB of random bytes, built in the sandbox.
  const made = await execStream(gw.url, 'bulk', { command: ['sh', '-c', 'head -c 16777216 /dev/urandom > blk'] });
  t.match(made.last, { type: 'exit', exitCode: 0 });
  const block = (await execStream(gw.url, 'bulk', { command: ['cat', 'blk'] })).stdout;
  t.equal(block.length, 16 * 1024 * 1024);
  const want = createHash('sha256');
  for (let i = 1; i <= 32; i++) want.update(`block ${String(i).padStart(2, '0')}\n`).update(block);
  const expected = want.digest('hex');
  const total = 32 * (9 + block.length);

  // Upgrades the gateway sees on the exec route: the CLI used the WebSocket, not NDJSON.
  let upgrades = 0;
  const onUpgrade = (req: IncomingMessage) => {
    if (req.url?.startsWith('/v1/sandboxes/bulk/exec?')) upgrades++;
  };
  gw.app.server.on('upgrade', onUpgrade);
  t.teardown(() => gw.app.server.off('upgrade', onUpgrade));

  // The CLI reaches the gateway through a proxy that resets every connection once, mid-transfer.
  const proxy = await startTcpProxy({ host: '127.0.0.1', port: Number(new URL(gw.url).port) });
  t.teardown(() => proxy.close());
  const child = spawn(
    process.execPath,
    [bin, 'sandbox', 'exec', 'bulk', '--', 'sh', '-c', 'for i in $(seq -w 1 32); do echo "block $i"; cat blk; done; exit 3'],
    { env: { ...process.env, OPENSHELL_GATEWAY: `http://127.0.0.1:${proxy.port}` }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  t.teardown(() => child.kill('SIGKILL'));
  const hash = createHash('sha256');
  let got = 0;
  let reset = false;
  child.stdout.on('data', (d: Buffer) => {
    hash.update(d);
    got += d.length;
    if (!reset && got > 200 * 1024 * 1024) {
      reset = true;
      proxy.resetAll();
    }
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const started = Date.now();
  const [code] = (await once(child, 'exit')) as [number];
  const secs = (Date.now() - started) / 1000;
  t.ok(reset, 'the connection was reset mid-transfer');
  t.equal(stderr, '', 'nothing on stderr');
  t.equal(code, 3, 'the command’s exit code');
  t.equal(got, total, `every byte (${(total / 1e6 / secs).toFixed(0)} MB/s with the reset)`);
  t.equal(hash.digest('hex'), expected, 'the same bytes, in order, none twice');
  t.ok(upgrades >= 2, `over the WebSocket route, reconnected after the reset (${upgrades} upgrades)`);
  await execStream(gw.url, 'bulk', { command: ['rm', '-f', 'blk'] });
});

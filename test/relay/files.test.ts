import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { api, startGateway, tempDir, waitForPhase } from '../helpers/gateway.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

t.test('files: 50 MiB up and down byte-identical, directories as tar, errors', async (t) => {
  const gw = await startGateway(t);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'files' });
  await waitForPhase(gw.app, 'files', 'Ready');
  const base = `${gw.url}/v1/sandboxes/files/files`;
  const remote = join(gw.stateDir, 'remote');

  const data = randomBytes(50 * 1024 * 1024);
  const put = await fetch(`${base}?path=${encodeURIComponent(`${remote}/big/blob.bin`)}`, {
    method: 'PUT',
    headers: { 'content-type': 'application/octet-stream' },
    body: data,
  });
  t.equal(put.status, 201);
  t.match(await put.json(), { bytes: data.length });
  const got = await fetch(`${base}?path=${encodeURIComponent(`${remote}/big/blob.bin`)}`);
  t.equal(got.status, 200);
  const back = Buffer.from(await got.arrayBuffer());
  t.equal(back.length, data.length);
  t.equal(sha(back), sha(data), 'download byte-identical');

  // A directory tree, up as tar and down as tar.
  const local = tempDir(t);
  mkdirSync(join(local, 'tree', 'a', 'b'), { recursive: true });
  writeFileSync(join(local, 'tree', 'top.txt'), 'top\n');
  writeFileSync(join(local, 'tree', 'a', 'b', 'deep.bin'), randomBytes(100_000));
  const tarball = execFileSync('tar', ['-cf', '-', '-C', join(local, 'tree'), '.']);
  const putTar = await fetch(`${base}?path=${encodeURIComponent(`${remote}/tree`)}`, {
    method: 'PUT',
    headers: { 'content-type': 'application/x-tar' },
    body: tarball,
  });
  t.equal(putTar.status, 201);
  const getTar = await fetch(`${base}?path=${encodeURIComponent(`${remote}/tree`)}&format=tar`);
  t.equal(getTar.headers.get('content-type'), 'application/x-tar');
  const out = join(local, 'out');
  mkdirSync(out);
  execFileSync('tar', ['-xf', '-', '-C', out], { input: Buffer.from(await getTar.arrayBuffer()) });
  t.equal(readFileSync(join(out, 'top.txt'), 'utf8'), 'top\n');
  t.equal(
    sha(readFileSync(join(out, 'a', 'b', 'deep.bin'))),
    sha(readFileSync(join(local, 'tree', 'a', 'b', 'deep.bin'))),
    'directory tree byte-identical',
  );

  const missing = await fetch(`${base}?path=${encodeURIComponent(`${remote}/nope.txt`)}`);
  t.equal(missing.status, 404);
  t.match(await missing.json(), { error: { code: 'NOT_FOUND' } });
  const dir = await fetch(`${base}?path=${encodeURIComponent(`${remote}/tree`)}`);
  t.equal(dir.status, 400);
  const noPath = await fetch(base);
  t.equal(noPath.status, 400);
});

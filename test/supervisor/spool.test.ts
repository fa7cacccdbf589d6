import { mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { Spool } from '../../src/supervisor/spool.js';

const MiB = 1024 * 1024;

async function tempDir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'openshell-spool-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

t.test('a spool whose file fills up keeps serving the newest bytes from bounded memory', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'ex.stdout');
  await symlink('/dev/full', path); // every write: ENOSPC
  let failure: Error | null = null;
  let onFailed!: () => void;
  const failed = new Promise<void>((resolve) => (onFailed = resolve));
  const spool = new Spool(path, {
    failedMemoryBytes: 3 * MiB,
    onError: (err) => {
      failure = err;
      onFailed();
    },
  });
  t.equal(spool.lagLimit, Number.POSITIVE_INFINITY, 'no limit while the file works');
  const chunk = (i: number): Buffer => Buffer.alloc(MiB / 2, i);
  spool.append(chunk(0));
  await failed;
  t.match(String(failure), /ENOSPC/);
  t.ok(spool.failed);
  for (let i = 1; i < 40; i++) spool.append(chunk(i));
  t.equal(spool.end, 20 * MiB);
  t.ok(spool.memoryBytes >= 3 * MiB && spool.memoryBytes <= 3 * MiB + MiB / 2, `memory bounded: ${spool.memoryBytes} bytes`);
  t.equal(spool.pendingBytes, 0, 'nothing counts as waiting for the file');
  t.ok(spool.lagLimit > 0 && spool.lagLimit < 3 * MiB, 'readers are told how far they may fall behind');
  // The newest bytes read back exactly.
  const tail = await spool.read(spool.end - MiB / 2, MiB);
  t.same(tail, chunk(39));
  const mid = await spool.read(spool.end - 2 * MiB - 7, 7);
  t.same(mid, Buffer.alloc(7, 35));
  // The dropped ones say so.
  await t.rejects(spool.read(0, MiB), /bytes 0\.\.\d+ were dropped: the spool file could not be written \(.*ENOSPC/);
  await spool.remove();
});

t.test('a working spool reads back every byte, from memory and then from its file', async (t) => {
  const dir = await tempDir(t);
  const spool = new Spool(join(dir, 'ex.stdout'));
  const parts = Array.from({ length: 8 }, (_, i) => Buffer.alloc(256 * 1024, i + 1));
  for (const p of parts) spool.append(p);
  t.same(await spool.read(3 * 256 * 1024, 256 * 1024), parts[3], 'while it is written');
  await spool.seal();
  t.equal(spool.memoryBytes, 0);
  t.same(await spool.read(0, 8 * 256 * 1024), Buffer.concat(parts), 'from the file');
  t.same(await spool.read(spool.end, 10), Buffer.alloc(0));
  await spool.remove();
});

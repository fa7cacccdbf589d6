import t, { type Test } from 'tap';
import net from 'node:net';
import path from 'node:path';
import { once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { send, rawWriteAvailable, SENT, HELD, FULL } from '../../src/egress/raw-write.js';
import { portOf, startTcp, within } from './fixtures/helpers.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** A connected pair on loopback: `dst` (ours, written to) and `peer` (the far end, paused: it reads nothing yet). */
async function pair(t: Test, opts: { dstReads?: boolean } = {}): Promise<{ dst: net.Socket; peer: net.Socket }> {
  let resolvePeer!: (s: net.Socket) => void;
  const peerP = new Promise<net.Socket>((r) => (resolvePeer = r));
  const server = await startTcp(t, (s) => {
    s.pause();
    resolvePeer(s);
  });
  // Not reading (`dstReads` false): only a write can notice what happens to the connection.
  const dst =
    opts.dstReads === false
      ? net.connect({ port: portOf(server), host: '127.0.0.1', onread: { buffer: Buffer.alloc(1024), callback: () => true } })
      : net.connect(portOf(server), '127.0.0.1');
  dst.on('error', () => {});
  t.teardown(() => dst.destroy());
  await once(dst, 'connect');
  if (opts.dstReads === false) dst.pause();
  return { dst, peer: await peerP };
}

/** Reads everything `peer` gets until it ends: byte count and SHA-256. */
function drainAll(peer: net.Socket): Promise<{ n: number; sha: string }> {
  const h = createHash('sha256');
  let n = 0;
  peer.on('data', (c: Buffer) => {
    n += c.length;
    h.update(c);
  });
  peer.resume();
  return once(peer, 'end').then(() => ({ n, sha: h.digest('hex') }));
}

/** `send` 1 MiB chunks until one is FULL (the kernel's buffers are full): what was sent, in order. */
function fillUntilFull(t: Test, dst: net.Socket): Buffer[] {
  const sent: Buffer[] = [];
  for (let i = 0; i < 256; i++) {
    const c = randomBytes(1 << 20);
    sent.push(c);
    const r = send(dst, c);
    if (r === FULL) return sent;
    t.equal(r, SENT, 'written at once while the kernel takes it');
  }
  throw new Error('256 MiB never filled the socket');
}

const sha = (bufs: Buffer[]): string => createHash('sha256').update(Buffer.concat(bufs)).digest('hex');

t.test('send writes straight to the handle on this Node: a small chunk goes out at once and is counted', async (t) => {
  t.ok(rawWriteAvailable(), 'the stream_wrap binding is usable (else every write goes through the Writable)');
  const { dst, peer } = await pair(t);
  const got = drainAll(peer);
  t.equal(send(dst, Buffer.from('hello ')), SENT);
  t.equal(dst.writableLength, 0, 'the Writable never saw it');
  t.equal(send(dst, Buffer.from('world')), SENT);
  t.equal(dst.bytesWritten, 11, "the handle's byte count includes direct writes");
  dst.end();
  const r = await within(5000, got);
  t.equal(r.n, 11);
  t.equal(r.sha, sha([Buffer.from('hello world')]));
});

t.test('a rest the kernel does not take is queued: FULL, then drain; later writes stay in order', async (t) => {
  const { dst, peer } = await pair(t);
  const sent = fillUntilFull(t, dst);
  t.equal(dst.writableLength, 0, 'queued by the handle, not by the Writable');
  // The Writable's own writes and further sends queue behind the direct rest.
  const tail1 = randomBytes(300_000);
  dst.write(tail1);
  const tail2 = randomBytes(1000);
  const r2 = send(dst, tail2);
  t.not(r2, SENT, 'the Writable is busy now: through it');
  t.ok(r2 === HELD || r2 === FULL);
  const drained = once(dst, 'drain');
  const got = drainAll(peer);
  await within(5000, drained, 'drain');
  dst.end();
  const r = await within(10_000, got);
  const all = [...sent, tail1, tail2];
  t.equal(r.n, all.reduce((n, b) => n + b.length, 0));
  t.equal(r.sha, sha(all), 'every byte, in order');
});

t.test('end() with a direct rest still queued delivers every byte before the FIN', async (t) => {
  const { dst, peer } = await pair(t);
  const sent = fillUntilFull(t, dst);
  const finished = once(dst, 'finish');
  dst.end();
  const got = drainAll(peer);
  const r = await within(10_000, got);
  t.equal(r.sha, sha(sent));
  await within(5000, finished);
});

t.test('the peer resets while a direct rest is queued: the socket is destroyed with the write error', async (t) => {
  const { dst, peer } = await pair(t, { dstReads: false });
  fillUntilFull(t, dst);
  const errP = once(dst, 'error') as Promise<[NodeJS.ErrnoException]>;
  peer.resetAndDestroy();
  const [err] = await within(5000, errP, 'write error');
  t.equal(err.syscall, 'write');
  t.ok(err.code === 'ECONNRESET' || err.code === 'EPIPE', `code ${err.code}`);
  t.ok(dst.destroyed);
});

t.test('a corked socket takes the chunk through its Writable', async (t) => {
  const { dst, peer } = await pair(t);
  const got = drainAll(peer);
  dst.cork();
  t.equal(send(dst, Buffer.from('corked')), HELD);
  t.equal(dst.writableLength, 6);
  dst.uncork();
  dst.end();
  t.equal((await within(5000, got)).n, 6);
});

t.test('OPENSHELL_EGRESS_RAW_WRITE=0 (also when set after import, as in a warm supervisor) and --pending-deprecation turn it off, without a warning', async (t) => {
  const run = promisify(execFile);
  const mod = path.join(ROOT, 'dist/src/egress/raw-write.js');
  const probe = (before: string): string =>
    `import(${JSON.stringify(mod)}).then((m) => { ${before}; console.log(m.rawWriteAvailable()); })`;
  const on = await run(process.execPath, ['-e', probe('')], { timeout: 10_000 });
  t.equal(on.stdout.trim(), 'true');
  const off = await run(process.execPath, ['-e', probe("process.env.OPENSHELL_EGRESS_RAW_WRITE = '0'")], { timeout: 10_000 });
  t.equal(off.stdout.trim(), 'false', 'the environment is read at the first write, not at import');
  const pending = await run(process.execPath, ['--pending-deprecation', '--trace-deprecation', '-e', probe('')], { timeout: 10_000 });
  t.equal(pending.stdout.trim(), 'false');
  // tap's own spawn hook, injected into every child, may warn; ours must not.
  t.notMatch(pending.stderr, /raw-write/, 'no deprecation warning from raw-write');
});

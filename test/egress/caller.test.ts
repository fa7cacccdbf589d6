import t from 'tap';
import type { Test } from 'tap';
import net from 'node:net';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { realpathSync } from 'node:fs';
import { CallerFinder, describeCaller, findSocketInode, parentOf, type Caller } from '../../src/egress/caller.js';
import { within } from './fixtures/helpers.js';

t.test('parentOf reads the field after the last parenthesis', async (t) => {
  t.equal(parentOf('4242 (curl) S 17 4242 17 0 -1'), 17);
  t.equal(parentOf('4242 (a) b) (c) R 99 1 1 0'), 99, 'a command name with spaces and parentheses');
  t.equal(parentOf('garbage'), null);
});

t.test('findSocketInode matches the local and the remote end', async (t) => {
  const table = [
    '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
    '   0: 0100007F:8F7B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6721 1 0 100 0 0 10 0',
    '   1: 0100007F:ADB6 0100007F:8F7B 01 00000000:00000000 00:00000000 00000000     0        0 6722 2 0 20 0 0 10 -1',
    '   2: 0100007F:8F7B 0100007F:ADB6 01 00000000:00000000 00:00000000 00000000     0        0 6723 2 0 20 0 0 10 -1',
  ].join('\n');
  t.equal(findSocketInode(table, '0100007F:ADB6', '0100007F:8F7B'), '6722', 'the client end');
  t.equal(findSocketInode(table, '0100007F:8F7B', '0100007F:ADB6'), '6723', 'the server end');
  t.equal(findSocketInode(table, '0100007F:ADB7', '0100007F:8F7B'), null);
});

/** A loopback server whose next accepted connection is identified as the proxy would. */
async function identifyServer(t: Test, root?: number): Promise<{ port: number; next: () => Promise<Caller> }> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    next: async () => {
      const [sock] = (await once(server, 'connection')) as [net.Socket];
      try {
        return await new CallerFinder(root !== undefined ? { root } : {}).find(sock);
      } finally {
        sock.destroy();
      }
    },
  };
}

function child(t: Test, file: string, args: string[]): ChildProcess {
  const c = spawn(file, args, { stdio: 'ignore' });
  t.teardown(() => {
    c.kill('SIGKILL');
  });
  return c;
}

const CURL = realpathSync('/usr/bin/curl');
const SH = realpathSync('/bin/sh');

t.test('a child process holding the connection: its executable, and its ancestors below the root', async (t) => {
  const srv = await identifyServer(t);
  await within(10_000, (async () => {
    const pending = srv.next();
    child(t, '/usr/bin/curl', ['-s', '-m', '5', `http://127.0.0.1:${srv.port}/`]);
    const direct = await pending;
    t.match(direct, { procs: [{ exe: CURL, ancestors: [] }] }, 'curl, started by this process (the root)');

    const viaShell = srv.next();
    child(t, '/bin/sh', ['-c', `/usr/bin/curl -s -m 5 http://127.0.0.1:${srv.port}/; true`]);
    const c = await viaShell;
    t.match(c, { procs: [{ exe: CURL, ancestors: [SH] }] }, 'curl under sh: sh is an ancestor, the root is not');
    t.equal(describeCaller(c), `${CURL} (via ${SH})`);
  })());
});

t.test('the root is nobody\'s caller; a connection from outside the root\'s tree is unidentified', async (t) => {
  const own = await identifyServer(t);
  await within(10_000, (async () => {
    const pending = own.next();
    const s = net.connect(own.port, '127.0.0.1');
    t.teardown(() => s.destroy());
    t.match(await pending, { unknown: /no process of the sandbox's own/ }, 'this process, the root, is not a candidate');

    const parent = await identifyServer(t, process.ppid);
    const p1 = parent.next();
    const s1 = net.connect(parent.port, '127.0.0.1');
    t.teardown(() => s1.destroy());
    t.match(await p1, { procs: [{ pid: process.pid, exe: realpathSync(process.execPath), ancestors: [] }] }, 'rooted at the parent: this process');

    // Rooted at a sleeping child: this process's connection is not one of its descendants'.
    const sleeper = child(t, '/bin/sleep', ['30']);
    await once(sleeper, 'spawn');
    const other = await identifyServer(t, sleeper.pid!);
    const p2 = other.next();
    const s2 = net.connect(other.port, '127.0.0.1');
    t.teardown(() => s2.destroy());
    const c = await p2;
    t.match(c, { unknown: /no process of the sandbox's own/ });
    t.match(describeCaller(c), /^unidentified process/);
  })());
});

t.test('lookups asked for at once share rounds, and each gets its own connection\'s holders', async (t) => {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  const port = (server.address() as net.AddressInfo).port;
  const finder = new CallerFinder({ root: process.pid });
  await within(20_000, (async () => {
    const N = 24;
    const accepted: net.Socket[] = [];
    server.on('connection', (s) => accepted.push(s));
    const kids = Array.from({ length: N }, (_, i) =>
      child(t, i % 2 ? '/bin/sh' : '/usr/bin/curl', i % 2 ? ['-c', `/usr/bin/curl -s -m 8 http://127.0.0.1:${port}/; true`] : ['-s', '-m', '8', `http://127.0.0.1:${port}/`]),
    );
    while (accepted.length < N) await once(server, 'connection');
    const found = await Promise.all(accepted.map((s) => finder.find(s)));
    const kidPids = new Set(kids.map((k) => k.pid));
    for (const c of found) {
      t.ok('procs' in c && c.procs.length === 1, 'one holder');
      if (!('procs' in c)) continue;
      const p = c.procs[0]!;
      t.equal(p.exe, CURL);
      // curl started directly has no ancestor below the root; under sh it has sh, whose pid is the child's.
      t.same(p.ancestors, kidPids.has(p.pid) ? [] : [SH]);
    }
    t.equal(new Set(found.map((c) => ('procs' in c ? c.procs[0]!.pid : 0))).size, N, 'a different process for each connection');
    for (const s of accepted) s.destroy();
  })());
});

t.test('IPv6 loopback connections are found in tcp6', async (t) => {
  const server = net.createServer();
  server.listen(0, '::1');
  const ok = await Promise.race([
    once(server, 'listening').then(() => true),
    once(server, 'error').then(() => false),
  ]);
  t.teardown(() => server.close());
  if (!ok) {
    t.pass('no IPv6 loopback here: nothing to check');
    return;
  }
  const port = (server.address() as net.AddressInfo).port;
  await within(10_000, (async () => {
    const accepted = once(server, 'connection') as Promise<[net.Socket]>;
    const s = net.connect(port, '::1');
    t.teardown(() => s.destroy());
    const [sock] = await accepted;
    t.match(await new CallerFinder({ root: process.ppid }).find(sock), { procs: [{ pid: process.pid }] });
    sock.destroy();
  })());
});

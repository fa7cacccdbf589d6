import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { connect, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import ssh2, { Client, type ClientChannel, type SFTPWrapper } from 'ssh2';
import t, { type Test } from 'tap';
import { createWebSocketStream, WebSocket, WebSocketServer } from 'ws';
import { silentLogger } from '../../src/log.js';
import { ExecRegistry } from '../../src/supervisor/exec-registry.js';
import { bridgeSshRelay } from '../../src/supervisor/ssh-relay.js';
import { generateHostKey, startSshServer } from '../../src/supervisor/sshd.js';
import { tempRegistry } from '../helpers/registry.js';

interface Ctx {
  dir: string;
  socketPath: string;
  registry: ExecRegistry;
}

async function setup(t: Test): Promise<Ctx> {
  const { dir, registry } = await tempRegistry(t, 'openshell-sshd-');
  const socketPath = join(dir, 'run', 'ssh.sock');
  const server = await startSshServer({ socketPath, registry, log: silentLogger });
  t.teardown(async () => {
    await server.close();
  });
  return { dir, socketPath, registry };
}

async function sshConnect(t: Test, sock: NodeJS.ReadWriteStream | (() => NodeJS.ReadWriteStream)): Promise<Client> {
  const client = new Client();
  const ready = once(client, 'ready');
  client.connect({ sock: (typeof sock === 'function' ? sock() : sock) as never, username: 'agent', readyTimeout: 10_000 });
  await ready;
  t.teardown(() => client.end());
  return client;
}

interface ExecOut {
  stdout: string;
  stderr: string;
  code: number | null;
  signal: string | null;
}

function execCollect(ch: ClientChannel): Promise<ExecOut> {
  let stdout = '';
  let stderr = '';
  let code: number | null = null;
  let signal: string | null = null;
  ch.on('data', (d: Buffer) => (stdout += d.toString()));
  ch.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  ch.on('exit', (c: number | null, s?: string) => {
    code = c;
    signal = s ?? null;
  });
  return new Promise((resolve) => ch.on('close', () => resolve({ stdout, stderr, code, signal })));
}

function exec(client: Client, cmd: string): Promise<ClientChannel> {
  return new Promise((resolve, reject) => client.exec(cmd, (err, ch) => (err ? reject(err) : resolve(ch))));
}

/** Runs a command, collecting from inside the callback: 'exit' may follow in the same chunk. */
function execRun(client: Client, cmd: string): Promise<ExecOut> {
  return new Promise((resolve, reject) =>
    client.exec(cmd, (err, ch) => (err ? reject(err) : execCollect(ch).then(resolve))),
  );
}

function isGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).startsWith('Z'); // an orphan zombie: PID 1 here does not reap
  } catch {
    return true;
  }
}

async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

t.test('socket is 0600 in a 0700 directory; a stale socket is replaced', async (t) => {
  const ctx = await setup(t);
  t.equal((await stat(ctx.socketPath)).mode & 0o777, 0o600);
  t.equal((await stat(join(ctx.dir, 'run'))).mode & 0o777, 0o700);
  t.ok((await stat(ctx.socketPath)).isSocket());
  // A second server on the same path removes the stale socket and listens.
  const other = await startSshServer({ socketPath: ctx.socketPath, registry: ctx.registry, log: silentLogger });
  await other.close();
});

t.test('exec: output, stderr and exit status', async (t) => {
  const ctx = await setup(t);
  const client = await sshConnect(t, connect(ctx.socketPath));
  t.same(await execRun(client, 'echo hi'), { stdout: 'hi\n', stderr: '', code: 0, signal: null });
  t.same(await execRun(client, 'echo oops >&2; exit 5'), { stdout: '', stderr: 'oops\n', code: 5, signal: null });
  const killed = await execRun(client, 'kill -TERM $$');
  t.equal(killed.signal, 'SIGTERM');
  // The exec is owned by the registry.
  t.ok(ctx.registry.list().some((h) => h.command.includes('echo hi')));
  // stdin and EOF
  const cat = await exec(client, 'cat');
  const out = execCollect(cat);
  cat.end('piped\n');
  t.same(await out, { stdout: 'piped\n', stderr: '', code: 0, signal: null });
});

t.test('exec: large output arrives before the exit status', async (t) => {
  const ctx = await setup(t);
  const client = await sshConnect(t, connect(ctx.socketPath));
  const ch = await exec(client, 'head -c 8388608 /dev/zero');
  let bytes = 0;
  let bytesAtExit = -1;
  ch.on('data', (d: Buffer) => (bytes += d.length));
  ch.on('exit', () => (bytesAtExit = bytes));
  await once(ch, 'close');
  t.equal(bytes, 8388608);
  t.equal(bytesAtExit, 8388608);
});

t.test('shell with a pty and window-change', async (t) => {
  const ctx = await setup(t);
  const client = await sshConnect(t, connect(ctx.socketPath));
  const ch = await new Promise<ClientChannel>((resolve, reject) =>
    client.shell({ term: 'xterm', cols: 80, rows: 24 }, (err, s) => (err ? reject(err) : resolve(s))),
  );
  let out = '';
  let step = 0;
  const code = new Promise<number>((resolve) => ch.on('exit', (c: number) => resolve(c)));
  ch.on('data', (d: Buffer) => {
    out += d.toString();
    if (step === 0 && /24 80\r?\n/.test(out)) {
      step = 1;
      ch.setWindow(30, 100, 0, 0);
      ch.write('stty size; tty >/dev/null && echo IS_TTY; exit 3\n');
    }
  });
  ch.write('echo $((6*7)); stty size\n');
  t.equal(await code, 3);
  t.match(out, /42\r\n/);
  t.match(out, /30 100/);
  t.match(out, /IS_TTY/);
});

t.test('closing the channel kills the process group', async (t) => {
  const ctx = await setup(t);
  const client = await sshConnect(t, connect(ctx.socketPath));
  const ch = await exec(client, 'sleep 100 & echo $!; echo $$; wait');
  let out = '';
  await new Promise<void>((resolve) =>
    ch.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.split('\n').length >= 3) resolve();
    }),
  );
  const [grandchild, leader] = out.trim().split('\n').map(Number) as [number, number];
  t.notOk(isGone(leader));
  ch.close();
  await waitFor(() => isGone(leader) && isGone(grandchild));
  t.pass('leader and grandchild are gone');
});

t.test('sftp: put and get are byte-identical; directory operations', async (t) => {
  const ctx = await setup(t);
  const client = await sshConnect(t, connect(ctx.socketPath));
  const sftp = await new Promise<SFTPWrapper>((resolve, reject) => client.sftp((err, s) => (err ? reject(err) : resolve(s))));
  const p = <T>(fn: (cb: (err: Error | null | undefined, v?: T) => void) => void): Promise<T> =>
    new Promise((resolve, reject) => fn((err, v) => (err ? reject(err) : resolve(v as T))));

  const data = randomBytes(3 * 1024 * 1024 + 17);
  const local = join(ctx.dir, 'local.bin');
  await writeFile(local, data);
  await p<void>((cb) => sftp.mkdir('up', cb));
  await p<void>((cb) => sftp.fastPut(local, 'up/remote.bin', cb));
  const remote = await readFile(join(ctx.dir, 'up', 'remote.bin'));
  const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
  t.equal(sha(remote), sha(data));

  const back = join(ctx.dir, 'back.bin');
  await p<void>((cb) => sftp.fastGet(join(ctx.dir, 'up', 'remote.bin'), back, cb));
  t.equal(sha(await readFile(back)), sha(data));

  const st = await p<{ size: number; isFile(): boolean }>((cb) => sftp.stat('up/remote.bin', cb));
  t.equal(st.size, data.length);
  t.equal(await p<string>((cb) => sftp.realpath('.', cb)), ctx.dir);
  const list = await p<{ filename: string }[]>((cb) => sftp.readdir('up', cb));
  t.same(
    list.map((e) => e.filename).filter((n) => n !== '.' && n !== '..'),
    ['remote.bin'],
  );
  await p<void>((cb) => sftp.rename('up/remote.bin', 'up/renamed.bin', cb));
  await p<void>((cb) => sftp.chmod('up/renamed.bin', 0o600, cb));
  t.equal((await stat(join(ctx.dir, 'up', 'renamed.bin'))).mode & 0o777, 0o600);
  await p<void>((cb) => sftp.unlink('up/renamed.bin', cb));
  await p<void>((cb) => sftp.rmdir('up', cb));
  await t.rejects(p((cb) => sftp.stat('up', cb)), /no such file/i);
});

t.test('ssh over a relay WebSocket bridged to the socket', async (t) => {
  const ctx = await setup(t);
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false });
  await once(wss, 'listening');
  t.teardown(() => {
    for (const c of wss.clients) c.terminate();
    wss.close();
  });
  const conn = once(wss, 'connection');
  // The supervisor dials the relay and bridges it to its socket.
  const sup = new WebSocket(`ws://127.0.0.1:${(wss.address() as AddressInfo).port}`, { perMessageDeflate: false });
  sup.once('open', () => void bridgeSshRelay(sup, ctx.socketPath).catch(() => {}));
  const [gw] = (await conn) as [WebSocket];
  const client = await sshConnect(t, createWebSocketStream(gw));
  t.same(await execRun(client, 'echo relayed'), { stdout: 'relayed\n', stderr: '', code: 0, signal: null });
});

t.test('host keys always parse (ssh2 alone gets about one in 256 wrong)', async (t) => {
  let bad = 0;
  for (let i = 0; i < 1000; i++) if (ssh2.utils.parseKey(generateHostKey()) instanceof Error) bad++;
  t.equal(bad, 0);
});

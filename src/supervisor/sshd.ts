import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { chmod, lstat, mkdir, stat, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import ssh2 from 'ssh2';
import type { Connection, PseudoTtyInfo, ServerChannel, Session } from 'ssh2';
import type { Logger } from '../log.js';
import { STREAM_STDOUT, type ExecStartOp } from '../protocol/exec.js';
import type { ExecHandle, ExecRegistry, ExecResult, ExecSubscription } from './exec-registry.js';
import { serveSftp } from './ssh-sftp.js';

export interface SshServerOptions {
  /** Unix socket path; its parent dir is created 0700 and the socket chmod 0600. */
  socketPath: string;
  registry: ExecRegistry;
  log: Logger;
  /** Shell for `shell` requests and for running `exec` command strings. */
  shell?: string;
  /**
   * `in-process` (default): SFTP served by the supervisor itself, as its own
   * user. `subprocess`: OpenSSH's sftp-server run through the registry like
   * any exec, so a confined sandbox's SFTP sees only the sandbox.
   */
  sftp?: 'in-process' | 'subprocess';
}

/** Runs the first sftp-server the sandbox has (a fixed script; nothing is interpolated). */
const SFTP_SERVER = [
  '/bin/sh',
  '-c',
  'for p in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server /usr/lib/ssh/sftp-server /usr/libexec/sftp-server /usr/lib/sftp-server; do ' +
    '[ -x "$p" ] && exec "$p"; done; echo "sftp-server not found in the sandbox (Debian package openssh-sftp-server)" >&2; exit 127',
];

export interface SshServer {
  /** Stops listening, ends every connection (closing a channel kills its process group). Idempotent. */
  close(): Promise<void>;
}

/**
 * The supervisor's SSH server on a Unix socket (never TCP). The socket is only
 * reachable through the gateway's authenticated `ssh` relay, so every client
 * is accepted (`none` or anything else). Shells and commands run through the
 * exec registry like every other exec; SFTP is served in process.
 */
export async function startSshServer(opts: SshServerOptions): Promise<SshServer> {
  const log = opts.log.child({ component: 'sshd' });
  const shell = opts.shell ?? '/bin/sh';
  await prepareSocketPath(opts.socketPath, log);
  const hostKey = generateHostKey();
  const connections = new Set<Connection>();
  const server = new ssh2.Server({ hostKeys: [hostKey] }, (client) => {
    connections.add(client);
    client.once('close', () => connections.delete(client));
    serveConnection(client, { registry: opts.registry, shell, log, sftp: opts.sftp ?? 'in-process' });
  });
  server.on('error', (err: Error) => log.error({ err }, 'ssh server error'));
  server.listen(opts.socketPath);
  await once(server, 'listening');
  await chmod(opts.socketPath, 0o600);
  log.info({ socketPath: opts.socketPath }, 'ssh server listening');

  let closing: Promise<void> | null = null;
  return {
    close() {
      closing ??= (async () => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        for (const c of connections) c.end();
        await closed;
        await unlink(opts.socketPath).catch(() => {});
      })();
      return closing;
    },
  };
}

/** Parent dir 0700 (created if missing; never loosened or tightened if it is a shared sticky dir), stale socket removed. */
/**
 * An ed25519 host key in OpenSSH format (ssh2 does not parse PKCS8 PEM, so
 * its own generator is used). About one key in 256 comes out unparseable
 * (ssh2 strips leading zero bytes of the public key: mscdex/ssh2#1513), so
 * each key is parsed back and a bad one replaced.
 */
export function generateHostKey(): string {
  for (;;) {
    const pair = ssh2.utils.generateKeyPairSync('ed25519');
    if (!(ssh2.utils.parseKey(pair.private) instanceof Error) && !(ssh2.utils.parseKey(pair.public) instanceof Error)) return pair.private;
  }
}

async function prepareSocketPath(socketPath: string, log: Logger): Promise<void> {
  const dir = dirname(socketPath);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const st = await stat(dir);
  if ((st.mode & 0o077) !== 0) {
    if (st.mode & 0o1000) log.warn({ dir }, 'ssh socket directory is a shared sticky directory; leaving its mode');
    else await chmod(dir, 0o700);
  }
  try {
    const s = await lstat(socketPath);
    if (!s.isSocket()) throw new Error(`${socketPath} exists and is not a socket`);
    await unlink(socketPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

interface ConnCtx {
  registry: ExecRegistry;
  shell: string;
  log: Logger;
  sftp: 'in-process' | 'subprocess';
}

function serveConnection(client: Connection, ctx: ConnCtx): void {
  client.on('authentication', (auth) => auth.accept());
  client.on('error', (err) => ctx.log.debug({ err }, 'ssh connection error'));
  client.on('ready', () => {
    client.on('session', (accept) => serveSession(accept(), ctx));
  });
}

function serveSession(session: Session, ctx: ConnCtx): void {
  let pty: PseudoTtyInfo | null = null;
  const env: Record<string, string> = {};
  let handle: ExecHandle | null = null;
  let started = false;

  session.on('pty', (accept, _reject, info) => {
    pty = info;
    accept?.();
  });
  session.on('window-change', (accept, _reject, info) => {
    if (pty) Object.assign(pty, { cols: info.cols, rows: info.rows });
    handle?.resize(info.cols, info.rows);
    accept?.();
  });
  session.on('env', (accept, _reject, info) => {
    env[info.key] = info.val;
    accept?.();
  });
  session.on('signal', (accept, _reject, info) => {
    try {
      handle?.signal(`SIG${info.name}`);
    } catch {
      // unknown signal name: ignore, as OpenSSH does
    }
    accept?.();
  });
  const once = (reject?: () => void): boolean => {
    if (started) {
      reject?.();
      return false;
    }
    started = true;
    return true;
  };
  session.on('shell', (accept, reject) => {
    if (!once(reject)) return;
    handle = runChannel(accept(), [ctx.shell, '-l'], pty, env, ctx);
  });
  session.on('exec', (accept, reject, info) => {
    if (!once(reject)) return;
    handle = runChannel(accept(), [ctx.shell, '-c', info.command], pty, env, ctx);
  });
  if (ctx.sftp === 'in-process') {
    session.on('sftp', (accept, reject) => {
      if (!once(reject)) return;
      serveSftp(accept(), { cwd: ctx.registry.defaultCwd, log: ctx.log });
    });
  }
  // Without an 'sftp' listener, ssh2 hands the sftp subsystem here as a raw channel.
  session.on('subsystem', (accept, reject, info) => {
    if (ctx.sftp !== 'subprocess' || info.name !== 'sftp') return reject?.();
    if (!once(reject)) return;
    handle = runChannel(accept(), SFTP_SERVER, null, env, ctx);
  });
}

/** Runs one command for a channel through the registry; the channel's lifetime bounds the process group. */
function runChannel(
  channel: ServerChannel,
  command: string[],
  pty: PseudoTtyInfo | null,
  env: Record<string, string>,
  ctx: ConnCtx,
): ExecHandle | null {
  const op: ExecStartOp = {
    op: 'start',
    execId: `ssh_${randomUUID()}`,
    command,
    env: pty ? { ...env, TERM: pty.term || env.TERM || 'xterm' } : { ...env },
    tty: pty !== null,
    ...(pty && pty.cols > 0 && pty.rows > 0 ? { cols: pty.cols, rows: pty.rows } : {}),
    timeoutSeconds: 0,
  };
  let handle: ExecHandle;
  try {
    handle = ctx.registry.start(op);
  } catch (err) {
    channel.stderr.write(`${(err as Error).message}\n`);
    channel.exit(127);
    channel.end();
    return null;
  }
  const log = ctx.log.child({ execId: op.execId });
  let sub: ExecSubscription | null = null;
  let inflight = 0;
  let pendingExit: ExecResult | null = null;
  let closed = false;

  const sendExit = (r: ExecResult): void => {
    if (closed) return;
    if (r.signal) channel.exit(r.signal.replace(/^SIG/, ''), false, '');
    else channel.exit(r.exitCode ?? 255);
    channel.end();
  };
  const written = (): void => {
    inflight--;
    if (inflight === 0 && pendingExit) sendExit(pendingExit);
  };
  const onDrain = (): void => {
    if (sub?.paused && !channel.writableNeedDrain && !channel.stderr.writableNeedDrain) sub.resume();
  };
  channel.on('drain', onDrain);
  channel.stderr.on('drain', onDrain);

  sub = handle.subscribe(
    { stdout: 0, stderr: 0 },
    {
      output(stream, _offset, data) {
        if (closed) return;
        inflight++;
        const ok = stream === STREAM_STDOUT ? channel.write(data, written) : channel.stderr.write(data, written);
        if (!ok) sub?.pause();
      },
      exit(result) {
        // exit-status goes out after every data packet (writes wait for window; exit() does not).
        if (inflight === 0) sendExit(result);
        else pendingExit = result;
      },
      error(err) {
        log.warn({ err }, 'ssh exec output unavailable');
        if (!closed) {
          channel.exit(255);
          channel.end();
        }
      },
    },
  );

  channel.on('data', (data: Buffer) => {
    if (!handle.writeStdin(data)) {
      channel.pause();
      handle.onceStdinDrain(() => channel.resume());
    }
  });
  channel.on('end', () => handle.closeStdin());
  channel.on('error', (err: Error) => log.debug({ err }, 'ssh channel error'));
  channel.once('close', () => {
    closed = true;
    sub?.close();
    // Closing a channel ends what it started.
    if (handle.state === 'running') handle.signal('SIGKILL');
  });
  return handle;
}

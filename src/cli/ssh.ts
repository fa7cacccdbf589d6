import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import { createWebSocketStream } from 'ws';
import { packageRoot } from '../paths.js';
import { CliExit, contextOf, type CliIo, type Context } from './context.js';
import { shellQuote } from './output.js';
import { waitOpen } from './ws.js';

/** The `openshell` launcher that ProxyCommand runs. */
export function cliEntry(): string {
  return join(packageRoot(), 'bin', 'openshell.js');
}

/** An OpenSSH `Host` block reaching the sandbox through `openshell ssh-proxy`. */
export function sshConfigBlock(name: string, gateway: string): string {
  const proxy = [process.execPath, cliEntry(), '--gateway', gateway, 'ssh-proxy', '%h'];
  return [
    `Host ${name}`,
    `  User sandbox`,
    `  ProxyCommand ${proxy.map((a) => (a === '%h' ? a : shellQuote(a))).join(' ')}`,
    `  StrictHostKeyChecking no`,
    `  UserKnownHostsFile /dev/null`,
    `  ServerAliveInterval 15`,
    `  ServerAliveCountMax 3`,
    `  LogLevel ERROR`,
    '',
  ].join('\n');
}

/** `sandbox ssh-config`, `sandbox connect`. */
export function registerSshCommands(sandbox: Command, io: CliIo): void {
  sandbox
    .command('ssh-config')
    .description('print an OpenSSH Host block for the sandbox (add it to ~/.ssh/config)')
    .argument('<name>')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const ctx = contextOf(io, cmd);
      await ctx.client.getSandbox(name); // a clear error for a typo, rather than an ssh failure later
      io.stdout.write(sshConfigBlock(name, ctx.gateway));
    });

  sandbox
    .command('connect')
    .description('open an interactive shell in the sandbox (runs the system ssh)')
    .argument('<name>')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const ctx = contextOf(io, cmd);
      await ctx.client.getSandbox(name);
      const code = await connect(ctx, name);
      if (code !== 0) throw new CliExit(code);
    });
}

/** `openshell ssh-proxy NAME`: for `ssh -o ProxyCommand`. */
export function registerSshProxyCommand(program: Command, io: CliIo): void {
  program
    .command('ssh-proxy')
    .description('bridge stdin/stdout to the sandbox sshd (used as an ssh ProxyCommand)')
    .argument('<name>')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      await sshProxy(contextOf(io, cmd), name);
    });
}

/** Runs `ssh -F <temp config> NAME` with our terminal; the temp config is removed afterwards. */
async function connect(ctx: Context, name: string): Promise<number> {
  const dir = await mkdtemp(join(tmpdir(), 'openshell-ssh-'));
  try {
    const file = join(dir, 'config');
    await writeFile(file, sshConfigBlock(name, ctx.gateway), { mode: 0o600 });
    const child = spawn('ssh', ['-F', file, name], { stdio: 'inherit', env: ctx.io.env });
    const [code, signal] = (await Promise.race([
      once(child, 'exit'),
      once(child, 'error').then(([err]) => {
        const e = err as NodeJS.ErrnoException;
        throw new CliExit(1, `openshell: cannot run ssh: ${e.code === 'ENOENT' ? 'ssh not found on PATH' : e.message}`);
      }),
    ])) as [number | null, NodeJS.Signals | null];
    return code ?? (signal ? 128 + 1 : 255);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Pipes stdin → WebSocket → stdout. The session is over when the sandbox side
 * ends (ssh closes its end first, our stdin EOF closes the WebSocket).
 */
async function sshProxy(ctx: Context, name: string): Promise<void> {
  const ws = ctx.client.openWebSocket(ctx.client.sshUrl(name));
  const duplex = createWebSocketStream(ws); // listening before the upgrade completes: sshd speaks first
  duplex.on('error', () => undefined); // reported by waitOpen or the pipelines
  await waitOpen(ctx, ws);
  const input = new AbortController();
  const upstream = pipeline(ctx.io.stdin, duplex, { signal: input.signal }).catch(() => undefined);
  try {
    await pipeline(duplex, ctx.io.stdout, { end: false });
  } catch (err) {
    // A close from the far end is how an SSH session normally ends.
    if (ws.readyState !== ws.CLOSED && ws.readyState !== ws.CLOSING) {
      throw new CliExit(255, `openshell ssh-proxy: connection to ${ctx.gateway} lost: ${(err as Error).message}`);
    }
  } finally {
    input.abort();
    await upstream;
    ws.terminate();
  }
}

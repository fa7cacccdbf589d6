import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, stat } from 'node:fs/promises';
import { basename, join, posix } from 'node:path';
import { Transform, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import { OpenShellApiError } from '../client/index.js';
import { CliExit, contextOf, isTty, type CliIo, type Context } from './context.js';

/** `sandbox upload`, `sandbox download`. */
export function registerFileCommands(sandbox: Command, io: CliIo): void {
  sandbox
    .command('upload')
    .description('copy a local file or directory into the sandbox')
    .argument('<name>')
    .argument('<local>', 'local file or directory')
    .argument('[dest]', 'destination path in the sandbox (default: the local base name)')
    .action(async (name: string, local: string, dest: string | undefined, _opts: unknown, cmd: Command) => {
      const ctx = contextOf(io, cmd);
      await upload(ctx, name, local, dest ?? basename(local));
    });

  sandbox
    .command('download')
    .description('copy a file or directory out of the sandbox')
    .argument('<name>')
    .argument('<path>', 'path in the sandbox')
    .argument('[dest]', 'local destination (default: the base name in the current directory; - = stdout)')
    .option('-r, --dir', 'the path is a directory (fetched as a tar stream)')
    .action(async (name: string, path: string, dest: string | undefined, opts: { dir?: boolean }, cmd: Command) => {
      const ctx = contextOf(io, cmd);
      await download(ctx, name, path, dest, Boolean(opts.dir));
    });
}

async function upload(ctx: Context, name: string, local: string, dest: string): Promise<void> {
  let st;
  try {
    st = await stat(local);
  } catch (err) {
    throw new CliExit(1, `openshell: cannot read ${local}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  await ctx.client.getSandbox(name); // fail before streaming anything
  const progress = new Progress(ctx.io.stderr, 'uploaded', st.isDirectory() ? null : st.size);
  if (st.isDirectory()) {
    const tar = spawn('tar', ['-C', local, '-cf', '-', '.'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const tarDone = childDone(tar, 'tar -c');
    try {
      await Promise.all([
        pipeline(tar.stdout, progress),
        ctx.client.uploadFile(name, dest, progress, { tar: true }),
        tarDone,
      ]);
    } finally {
      tar.kill();
      progress.finish();
    }
  } else {
    try {
      await Promise.all([pipeline(createReadStream(local), progress), ctx.client.uploadFile(name, dest, progress)]);
    } finally {
      progress.finish();
    }
  }
  if (ctx.output === 'table') ctx.io.stderr.write(`uploaded ${local} to ${name}:${dest} (${formatBytes(progress.bytes)})\n`);
}

async function download(ctx: Context, name: string, path: string, dest: string | undefined, dir: boolean): Promise<void> {
  let res;
  try {
    res = await ctx.client.download(name, path, { tar: dir });
  } catch (err) {
    // A directory asked for as a file: fetch it as a tar stream instead.
    if (!dir && err instanceof OpenShellApiError && err.status === 400 && /director/i.test(err.message)) {
      dir = true;
      res = await ctx.client.download(name, path, { tar: true });
    } else {
      throw err;
    }
  }
  const isTar = dir || /application\/(x-)?tar/.test(res.contentType ?? '');
  const progress = new Progress(ctx.io.stderr, 'downloaded', res.contentLength);
  const base = posix.basename(path.replace(/\/+$/, '')) || 'download';
  try {
    if (isTar) {
      const target = dest ?? base;
      await mkdir(target, { recursive: true });
      const tar = spawn('tar', ['-xf', '-', '-C', target], { stdio: ['pipe', 'ignore', 'pipe'] });
      await Promise.all([pipeline(res.body, progress, tar.stdin), childDone(tar, 'tar -x')]);
      if (ctx.output === 'table') ctx.io.stderr.write(`downloaded ${name}:${path} to ${target}/ (${formatBytes(progress.bytes)})\n`);
    } else if (dest === '-') {
      await pipeline(res.body, progress, ctx.io.stdout, { end: false });
    } else {
      let target = dest ?? base;
      if (dest && (await stat(dest).then((s) => s.isDirectory(), () => false))) target = join(dest, base);
      await pipeline(res.body, progress, createWriteStream(target));
      if (ctx.output === 'table') ctx.io.stderr.write(`downloaded ${name}:${path} to ${target} (${formatBytes(progress.bytes)})\n`);
    }
  } finally {
    progress.finish();
  }
}

/** Resolves when the child exits 0; otherwise rejects with its stderr. */
async function childDone(child: ChildProcess, what: string): Promise<void> {
  const errChunks: Buffer[] = [];
  child.stderr?.on('data', (c: Buffer) => errChunks.push(c));
  const [code] = (await Promise.race([
    once(child, 'close'),
    once(child, 'error').then(([err]) => {
      throw new CliExit(1, `openshell: cannot run ${what}: ${(err as Error).message}`);
    }),
  ])) as [number | null];
  if (code !== 0) {
    throw new CliExit(1, `openshell: ${what} failed (exit ${code}): ${Buffer.concat(errChunks).toString('utf8').trim()}`);
  }
}

/** Counts bytes passing through; on a TTY, shows them on one updating stderr line. */
class Progress extends Transform {
  bytes = 0;
  readonly #out: Writable;
  readonly #tty: boolean;
  readonly #verb: string;
  readonly #total: number | null;
  #lastDraw = 0;

  constructor(out: Writable, verb: string, total: number | null) {
    super();
    this.#out = out;
    this.#tty = isTty(out);
    this.#verb = verb;
    this.#total = total;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, callback: () => void): void {
    this.bytes += chunk.length;
    const now = Date.now();
    if (this.#tty && now - this.#lastDraw > 100) {
      this.#lastDraw = now;
      const pct = this.#total ? ` (${Math.floor((this.bytes / this.#total) * 100)}%)` : '';
      this.#out.write(`\r\x1b[2K${this.#verb} ${formatBytes(this.bytes)}${pct}`);
    }
    this.push(chunk);
    callback();
  }

  /** Clears the progress line and releases a pipeline left waiting by a failed transfer. */
  finish(): void {
    if (this.#tty && this.#lastDraw) this.#out.write('\r\x1b[2K');
    this.destroy();
  }
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

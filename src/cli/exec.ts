import { fstatSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import type { Readable, Writable } from 'node:stream';
import { Option, type Command } from 'commander';
import type WebSocket from 'ws';
import { DEFAULT_RESUME_TIMEOUT_MS, ExecChannel, OpenShellApiError, newRequestId, type BinaryExecEvent, type ExecResumeOptions } from '../client/index.js';
import type { ExecEvent } from '../schemas/sandbox.js';
import type { ExecBody } from '../schemas/sandbox.js';
import { CliExit, collectKeyValue, contextOf, isTty, parseSeconds, UsageError, writeAll, type CliIo, type Context } from './context.js';
import { printJson } from './output.js';
import { waitOpen } from './ws.js';

interface ExecOptions {
  workdir?: string;
  env?: Record<string, string>;
  timeout?: number;
  tty?: boolean;
  user?: string;
  stdin: boolean;
  detach?: boolean;
  resumeTimeout: number;
  requestId?: string;
}

/** Exit code of a command that ended with an exec `error` event (like ssh's 255). */
export const EXEC_ERROR_EXIT = 255;

/** `openshell sandbox exec NAME [opts] -- cmd…`. */
export function registerExecCommand(sandbox: Command, io: CliIo): void {
  sandbox
    .command('exec')
    .description('run a command in a sandbox; exits with its exit code')
    .argument('<name>')
    .argument('<command...>', 'the command, after --')
    .option('--workdir <dir>', 'working directory')
    .option('--env <KEY=VALUE>', 'environment variable, repeatable', collectKeyValue('--env'))
    .option('--timeout <seconds>', 'kill the command after this long (exit 124)', parseSeconds('--timeout', true))
    .option('-t, --tty', 'allocate a terminal (interactive, over a WebSocket)')
    .option('--user <user>', 'run as this user')
    .option('--no-stdin', 'do not forward stdin (by default piped or redirected stdin is forwarded)')
    .option('-d, --detach', 'start the command and print its exec id; see `sandbox execs`, `attach`, `kill`')
    .option('--request-id <id>', 'idempotency key: the same id in the same sandbox within 24 h never starts a second process (default: a fresh one)')
    .addOption(
      new Option('--resume-timeout <seconds>', 'how long to keep re-attaching while the gateway is unreachable (0: never)')
        .default(DEFAULT_RESUME_TIMEOUT_MS / 1000)
        .argParser(parseSeconds('--resume-timeout', true)),
    )
    .action(async (name: string, command: string[], opts: ExecOptions, cmd: Command) => {
      const ctx = contextOf(io, cmd);
      const body: ExecBody = { command, requestId: opts.requestId ?? newRequestId() };
      if (opts.env) body.env = opts.env;
      if (opts.workdir) body.workdir = opts.workdir;
      if (opts.user) body.user = opts.user;
      if (opts.timeout !== undefined) body.timeoutSeconds = opts.timeout;
      if (opts.detach) {
        if (opts.tty) throw new UsageError('--detach: cannot be combined with --tty');
        if (opts.stdin && forwardable(ctx.io.stdin)) {
          const head = await readSettled(ctx.io.stdin, STDIN_SETTLE_MS, STDIN_BODY_MAX);
          if (!head.ended) throw new UsageError('--detach: stdin must be small and end at once (or use --no-stdin)');
          const stdin = Buffer.concat(head.chunks);
          if (stdin.length > 0) body.stdin = stdin.toString('base64');
        }
        const { execId } = await ctx.client.execDetached(name, body);
        if (ctx.output === 'json') printJson(ctx.io.stdout, { execId });
        else ctx.io.stdout.write(`${execId}\n`);
        return;
      }
      const code = opts.tty ? await execWebSocket(ctx, name, command, opts, true) : await execPlain(ctx, name, command, body, opts);
      if (code !== 0) throw new CliExit(code);
    });
}

/** The exit code the CLI reports for an exec's end: the command's, 124 on timeout, 128+n on a signal. */
export function exitCodeOf(end: { exitCode?: number | null; signal?: string | null; timedOut?: boolean }): number {
  if (end.timedOut) return 124;
  if (typeof end.exitCode === 'number') return end.exitCode;
  if (end.signal) {
    const n = (osConstants.signals as Record<string, number>)[end.signal];
    return n ? 128 + n : EXEC_ERROR_EXIT;
  }
  return EXEC_ERROR_EXIT;
}

/** Piped stdin that ends within this long, and within STDIN_BODY_MAX, is sent in the request body. */
export const STDIN_SETTLE_MS = 250;
/** Larger piped stdin, or stdin still open after STDIN_SETTLE_MS, is streamed instead. */
export const STDIN_BODY_MAX = 16 * 1024 * 1024;

/**
 * A command without a terminal. With no stdin to forward, or piped stdin that
 * ends at once (`echo x | openshell …`, `< small-file`), it runs over the
 * NDJSON exec API with stdin in the body, which survives a lost relay
 * (transparent resume). Stdin that is still open after STDIN_SETTLE_MS (a
 * producer that is slow or never ends) or is large is streamed over the
 * WebSocket exec instead, as ssh does: the command starts at once, nothing is
 * held in our memory, and there is no size cap.
 */
async function execPlain(ctx: Context, name: string, command: string[], body: ExecBody, opts: ExecOptions): Promise<number> {
  const resume = resumeOf(opts);
  if (!opts.stdin || !forwardable(ctx.io.stdin)) return execBinary(ctx, name, body, resume);
  const head = await readSettled(ctx.io.stdin, STDIN_SETTLE_MS, STDIN_BODY_MAX);
  if (!head.ended) return execWebSocket(ctx, name, command, opts, false, head.chunks);
  const stdin = Buffer.concat(head.chunks);
  if (stdin.length > 0) body.stdin = stdin.toString('base64');
  return printExec(ctx, ctx.client.exec(name, body, { resume }));
}

function resumeOf(opts: { resumeTimeout: number }): ExecResumeOptions {
  return { timeoutMs: Math.round(opts.resumeTimeout * 1000) };
}

/**
 * No stdin: the bulk transport, the WebSocket exec route (binary frames, no
 * base64), with the same resume as the NDJSON stream: the same requestId and
 * the offsets already printed.
 */
async function execBinary(ctx: Context, name: string, body: ExecBody, resume: ExecResumeOptions): Promise<number> {
  const events = ctx.client.execBinary(
    name,
    {
      command: body.command,
      requestId: body.requestId,
      workdir: body.workdir,
      user: body.user,
      env: body.env,
      timeoutSeconds: body.timeoutSeconds,
    },
    { resume },
  );
  return printExec(ctx, withFallback(events, () => ctx.client.exec(name, body, { resume })));
}

/**
 * The binary events, or, when the upgrade is answered by something that is
 * not the gateway's error envelope (a proxy that passes no upgrades, an old
 * gateway), the NDJSON stream of the same exec (the same requestId, so
 * never a second process).
 */
async function* withFallback(
  binary: AsyncGenerator<BinaryExecEvent>,
  ndjson: () => AsyncGenerator<ExecEvent>,
): AsyncGenerator<ExecEvent | BinaryExecEvent> {
  let first: IteratorResult<BinaryExecEvent>;
  try {
    first = await binary.next();
  } catch (err) {
    if (!(err instanceof OpenShellApiError) || !err.code.startsWith('HTTP_')) throw err;
    yield* ndjson();
    return;
  }
  if (first.done) return;
  yield first.value;
  yield* binary;
}

/** Prints an exec's events to our stdout/stderr as they arrive; resolves with the exit code the CLI reports. */
export async function printExec(ctx: Context, events: AsyncIterable<ExecEvent | BinaryExecEvent>): Promise<number> {
  for await (const ev of events) {
    switch (ev.type) {
      case 'stdout':
        await writeAll(ctx.io.stdout, typeof ev.data === 'string' ? Buffer.from(ev.data, 'base64') : ev.data);
        break;
      case 'stderr':
        await writeAll(ctx.io.stderr, typeof ev.data === 'string' ? Buffer.from(ev.data, 'base64') : ev.data);
        break;
      case 'exit':
        return exitCodeOf(ev);
      case 'error':
        throw new CliExit(EXEC_ERROR_EXIT, `openshell: exec failed: ${ev.message} (${ev.code})`);
    }
  }
  throw new CliExit(EXEC_ERROR_EXIT, `openshell: exec stream from ${ctx.gateway} ended without an exit status`);
}

/**
 * Whether our stdin is input to forward: piped or redirected from a file. A
 * TTY (interactive), a character device such as /dev/null, or an empty file
 * is not read.
 */
function forwardable(stdin: Readable): boolean {
  if (isTty(stdin)) return false;
  const fd = (stdin as { fd?: unknown }).fd;
  if (typeof fd !== 'number') return true;
  try {
    const st = fstatSync(fd);
    return !st.isCharacterDevice() && !(st.isFile() && st.size === 0);
  } catch {
    return false;
  }
}

/**
 * Reads stdin until it ends, `ms` pass, or more than `max` bytes arrived,
 * then pauses it; what was not read stays in the stream for the next reader.
 */
function readSettled(stdin: Readable, ms: number, max: number): Promise<{ chunks: Buffer[]; ended: boolean }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let bytes = 0;
    const stop = (): void => {
      clearTimeout(timer);
      stdin.off('data', onData);
      stdin.off('end', onEnd);
      stdin.off('error', onError);
    };
    const done = (ended: boolean): void => {
      stop();
      if (!ended) stdin.pause();
      resolve({ chunks, ended });
    };
    const onData = (chunk: Buffer | string): void => {
      const b = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      chunks.push(b);
      bytes += b.length;
      if (bytes > max) done(false);
    };
    const onEnd = (): void => done(true);
    const onError = (err: Error): void => {
      stop();
      reject(new CliExit(EXEC_ERROR_EXIT, `openshell: cannot read stdin: ${err.message}`));
    };
    const timer = setTimeout(() => done(false), ms);
    if (stdin.readableEnded) return done(true);
    stdin.on('data', onData);
    stdin.once('end', onEnd);
    stdin.once('error', onError);
    stdin.resume();
  });
}

/** Stdin bytes queued on the WebSocket above which we stop reading our stdin until they are sent. */
const STDIN_HIGH_WATER = 1024 * 1024;

/**
 * Exec over the WebSocket: channel-byte frames (0 stdin, 1 stdout, 2 stderr,
 * 3 status JSON, 4 resize JSON). With `tty`, the local terminal goes to raw
 * mode and is resized on SIGWINCH; without, stdin is streamed (after
 * `pending`, what was already read of it) with backpressure, then closed.
 */
async function execWebSocket(
  ctx: Context,
  name: string,
  command: string[],
  opts: ExecOptions,
  tty: boolean,
  pending: Buffer[] = [],
): Promise<number> {
  const { stdin, stdout, stderr } = ctx.io;
  const size = () => ({
    cols: (stdout as { columns?: number }).columns ?? 80,
    rows: (stdout as { rows?: number }).rows ?? 24,
  });
  const url = ctx.client.execUrl(name, {
    command,
    tty,
    workdir: opts.workdir,
    user: opts.user,
    env: opts.env,
    timeoutSeconds: opts.timeout,
    ...(tty ? size() : {}),
  });
  const ws = ctx.client.openWebSocket(url);
  const raw = tty && isTty(stdin) && typeof (stdin as { setRawMode?: unknown }).setRawMode === 'function';
  const setRaw = (on: boolean) => (stdin as unknown as { setRawMode(on: boolean): void }).setRawMode(on);
  const sendResize = () => {
    const { cols, rows } = size();
    // Both spellings: ours ({cols, rows}) and the channel.k8s.io one ({Width, Height}).
    sendFrame(ws, ExecChannel.resize, Buffer.from(JSON.stringify({ cols, rows, Width: cols, Height: rows })));
  };
  const onStdin = (chunk: Buffer | string) => {
    const data = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    if (data.length === 0) return;
    if (ws.bufferedAmount + data.length <= STDIN_HIGH_WATER) return sendFrame(ws, ExecChannel.stdin, data);
    // Backpressure: a fast producer waits for the network instead of filling our memory.
    stdin.pause();
    sendFrame(ws, ExecChannel.stdin, data, () => {
      if (!finished) stdin.resume();
    });
  };
  // An empty stdin frame is end-of-input.
  const onStdinEnd = () => sendFrame(ws, ExecChannel.stdin, Buffer.alloc(0));
  let finished = false;
  let status: number | undefined;
  let errorMessage: string | undefined;
  let onOutputError: (err: Error) => void = () => undefined;
  // Listeners go on before the upgrade completes: a short command's output and
  // status can arrive together with the 101.
  const ended = new Promise<number>((resolve, reject) => {
    // Our reader went away (`| head`): end the exec (closing kills it) and exit as a pipe writer does.
    onOutputError = (err) => {
      ws.terminate();
      reject(err);
    };
    stdout.on('error', onOutputError);
    stderr.on('error', onOutputError);
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      const frame = isBinary ? data : Buffer.from(data);
      if (frame.length === 0) return;
      const payload = frame.subarray(1);
      switch (frame[0]) {
        case ExecChannel.stdout:
          write(stdout, payload, ws);
          break;
        case ExecChannel.stderr:
          write(stderr, payload, ws);
          break;
        case ExecChannel.status: {
          const parsed = parseStatus(payload);
          status = parsed.code;
          errorMessage = parsed.error;
          break;
        }
      }
    });
    ws.once('close', (code: number, reason: Buffer) => {
      if (errorMessage) reject(new CliExit(EXEC_ERROR_EXIT, `openshell: exec failed: ${errorMessage}`));
      else if (status !== undefined) resolve(status);
      else if (code >= 4000) reject(new CliExit(EXEC_ERROR_EXIT, `openshell: exec failed: ${reason.toString() || `closed with ${code}`}`));
      else reject(new CliExit(EXEC_ERROR_EXIT, `openshell: exec connection to ${ctx.gateway} closed without an exit status (${code})`));
    });
  });
  ended.catch(() => undefined); // awaited below; a failed upgrade rejects waitOpen first
  try {
    await waitOpen(ctx, ws);
    ws.on('error', () => undefined); // a lost connection shows up as 'close'
    if (raw) setRaw(true);
    for (const chunk of pending) onStdin(chunk);
    stdin.on('data', onStdin);
    stdin.once('end', onStdinEnd);
    stdin.resume();
    if (tty && isTty(stdout)) process.on('SIGWINCH', sendResize);
    return await ended;
  } finally {
    finished = true;
    process.off('SIGWINCH', sendResize);
    stdout.off('error', onOutputError);
    stderr.off('error', onOutputError);
    stdin.off('data', onStdin);
    stdin.off('end', onStdinEnd);
    stdin.pause();
    if (raw) setRaw(false);
    ws.terminate();
  }
}

function sendFrame(ws: WebSocket, channel: number, payload: Buffer, sent?: () => void): void {
  if (ws.readyState !== ws.OPEN) return sent?.();
  ws.send(Buffer.concat([Buffer.of(channel), payload]), { binary: true }, sent);
}

/** Writes terminal output, pausing the socket while our stdout is full. */
function write(out: Writable, payload: Buffer, ws: WebSocket): void {
  if (!out.write(payload)) {
    ws.pause();
    out.once('drain', () => ws.resume());
  }
}

/**
 * The status frame: ours (`{exitCode, signal, timedOut}` or `{error|code,
 * message}`) or the channel.k8s.io `Status` (`Success`, or `Failure` with an
 * `ExitCode` cause).
 */
export function parseStatus(payload: Buffer): { code?: number; error?: string } {
  let s: Record<string, unknown>;
  try {
    s = JSON.parse(payload.toString('utf8')) as Record<string, unknown>;
  } catch {
    return { error: `unreadable status frame: ${payload.toString('utf8').slice(0, 200)}` };
  }
  if (s.type === 'error' || (typeof s.code === 'string' && typeof s.message === 'string' && !('exitCode' in s))) {
    return { error: `${String(s.message)} (${String(s.code)})` };
  }
  if ('exitCode' in s || 'timedOut' in s || 'signal' in s) {
    return { code: exitCodeOf(s as { exitCode?: number | null; signal?: string | null; timedOut?: boolean }) };
  }
  if (s.status === 'Success') return { code: 0 };
  if (s.status === 'Failure') {
    const causes = ((s.details as { causes?: Array<{ reason?: string; message?: string }> } | undefined)?.causes ?? []);
    const exit = causes.find((c) => c.reason === 'ExitCode');
    if (exit && /^\d+$/.test(exit.message ?? '')) return { code: Number(exit.message) };
    const reason = typeof s.reason === 'string' ? s.reason : undefined;
    return { error: s.message ? `${String(s.message)}${reason ? ` (${reason})` : ''}` : (reason ?? 'failed') };
  }
  return { error: `unknown status frame: ${payload.toString('utf8').slice(0, 200)}` };
}

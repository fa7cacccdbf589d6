import { Readable, type Writable } from 'node:stream';
import type { Command } from 'commander';
import { OpenShellClient } from '../client/index.js';
import type { OutputFormat } from './output.js';

export const DEFAULT_GATEWAY = 'http://127.0.0.1:8080';

/** Where the CLI reads and writes: the process's stdio, or test doubles. */
export interface CliIo {
  stdout: Writable;
  stderr: Writable;
  stdin: Readable;
  env: NodeJS.ProcessEnv;
}

/** A bad invocation: printed with the usage hint, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** Ends the command with this exit code, after its message (if any) is printed to stderr. */
export class CliExit extends Error {
  override name = 'CliExit';
  readonly exitCode: number;
  constructor(exitCode: number, message = '') {
    super(message);
    this.exitCode = exitCode;
  }
}

/** What every command action gets: the io, the client for the chosen gateway, the output format. */
export interface Context {
  io: CliIo;
  gateway: string;
  token: string | undefined;
  output: OutputFormat;
  client: OpenShellClient;
}

export function contextOf(io: CliIo, cmd: Command): Context {
  const opts = cmd.optsWithGlobals<{ gateway?: string; output?: OutputFormat }>();
  const gateway = opts.gateway || io.env.OPENSHELL_GATEWAY || DEFAULT_GATEWAY;
  const token = io.env.OPENSHELL_AUTH_TOKEN || undefined;
  let client: OpenShellClient;
  try {
    client = new OpenShellClient({ baseUrl: gateway, token });
  } catch (err) {
    throw new UsageError(`--gateway: ${(err as Error).message}`);
  }
  return { io, gateway: client.baseUrl, token, output: opts.output ?? 'table', client };
}

/** Commander option parser for repeatable `--flag k=v`. */
export function collectKeyValue(flag: string): (value: string, previous: Record<string, string> | undefined) => Record<string, string> {
  return (value, previous) => {
    const eq = value.indexOf('=');
    if (eq <= 0) throw new UsageError(`${flag}: expected KEY=VALUE, got "${value}"`);
    return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
  };
}

/** Commander option parser for a positive whole number of seconds. */
export function parseSeconds(flag: string, allowZero = false): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!/^\d+(\.\d+)?$/.test(value) || !Number.isFinite(n) || (!allowZero && n <= 0)) {
      throw new UsageError(`${flag}: expected a ${allowZero ? 'non-negative' : 'positive'} number of seconds, got "${value}"`);
    }
    return n;
  };
}

/** Writes and waits for the stream to take it (backpressure for large outputs). */
export async function writeAll(out: Writable, chunk: Buffer | string): Promise<void> {
  if (!out.write(chunk)) {
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => {
        out.off('drain', done);
        out.off('error', done);
        if (err) reject(err);
        else resolve();
      };
      out.once('drain', done);
      out.once('error', done);
    });
  }
}

export function isTty(stream: Readable | Writable): boolean {
  return Boolean((stream as { isTTY?: boolean }).isTTY);
}

/** An empty stdin for embedding and tests. */
export function emptyStdin(): Readable {
  return Readable.from([]);
}

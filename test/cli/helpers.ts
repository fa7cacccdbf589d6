import { PassThrough, Readable } from 'node:stream';
import { runCli } from '../../src/cli/main.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `openshell <argv>` in-process with captured stdio; env is only what is given. */
export async function cli(argv: string[], opts: { env?: NodeJS.ProcessEnv; stdin?: string | Buffer } = {}): Promise<CliResult> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  stdout.on('data', (c: Buffer) => out.push(c));
  stderr.on('data', (c: Buffer) => err.push(c));
  const stdin = opts.stdin === undefined ? Readable.from([]) : Readable.from([Buffer.from(opts.stdin)]);
  const code = await runCli(argv, { stdout, stderr, stdin, env: opts.env ?? {} });
  return { code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
}

/** A port nobody listens on. */
export { freePort as closedPort } from '../../bench/ports.js';

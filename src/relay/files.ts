import { Readable } from 'node:stream';
import { OpenShellError, invalidArgument } from '../errors.js';
import type { ExecRun, RunEvent } from './exec-run.js';
import type { ExecService } from './exec-service.js';

/**
 * File transfer over `exec` relays: the registry runs `cat` / `tar` in the
 * sandbox and the bytes stream through, both ways, with no size cap.
 */
export class FileService {
  readonly #execs: ExecService;

  constructor(execs: ExecService) {
    this.#execs = execs;
  }

  /** Streams `body` into `path` (a file, or with `tar` a directory to extract into). */
  async upload(name: string, path: string, body: AsyncIterable<Buffer>, opts: { tar: boolean; signal?: AbortSignal }) {
    checkPath(path);
    const script = opts.tar
      ? 'mkdir -p -- "$1" && exec tar -xf - -C "$1"'
      : 'mkdir -p -- "$(dirname -- "$1")" && exec cat > "$1"';
    const run = await this.#execs.start(
      name,
      { command: ['sh', '-c', script, 'sh', path] },
      { signal: opts.signal, interactiveStdin: true },
    );
    opts.signal?.addEventListener('abort', () => !run.finished && run.abort(), { once: true });
    let bytes = 0;
    const events = run[Symbol.asyncIterator]();
    const stderr: Buffer[] = [];
    // Drain the run's events while stdin streams, so its output never stalls the upload.
    const outcome = (async () => {
      for (;;) {
        const { value, done } = await events.next();
        if (done) return null;
        if (value.type === 'stderr') stderr.push(value.data);
        if (value.type === 'exit' || value.type === 'error') return value;
      }
    })();
    for await (const chunk of body) {
      if (run.finished) break;
      bytes += chunk.length;
      run.writeStdin(chunk);
      await run.drained();
    }
    run.closeStdin();
    const end = await outcome;
    failUnlessOk(end, stderr, path);
    return { path, bytes };
  }

  /** Streams `path` out of the sandbox (a file, or with `tar` a directory as a tar stream). */
  async download(name: string, path: string, opts: { tar: boolean; signal?: AbortSignal }): Promise<Readable> {
    checkPath(path);
    const command = opts.tar ? ['tar', '-cf', '-', '-C', path, '.'] : ['cat', '--', path];
    const run = await this.#execs.start(name, { command }, { signal: opts.signal });
    opts.signal?.addEventListener('abort', () => !run.finished && run.abort(), { once: true });
    const events = run[Symbol.asyncIterator]();
    // Wait for the first byte or the end, so a missing file is a 404, not a 200 with an empty body.
    const stderr: Buffer[] = [];
    for (;;) {
      const { value, done } = await events.next();
      if (done) {
        failUnlessOk(null, stderr, path);
        return Readable.from([]);
      }
      if (value.type === 'stderr') stderr.push(value.data);
      else if (value.type === 'stdout') return Readable.from(streamRest(value.data, events, run));
      else if (value.type === 'exit' || value.type === 'error') {
        failUnlessOk(value, stderr, path);
        return Readable.from([]);
      }
    }
  }
}

async function* streamRest(first: Buffer, events: AsyncIterator<RunEvent>, run: ExecRun): AsyncGenerator<Buffer> {
  yield first;
  const stderr: Buffer[] = [];
  try {
    for (;;) {
      const { value, done } = await events.next();
      if (done) return;
      if (value.type === 'stdout') yield value.data;
      else if (value.type === 'stderr') stderr.push(value.data);
      else if (value.type === 'exit' || value.type === 'error') {
        // A failure after bytes were sent can only truncate: end the stream with an error.
        failUnlessOk(value, stderr, '');
        return;
      }
    }
  } finally {
    if (!run.finished) run.abort();
  }
}

function failUnlessOk(end: RunEvent | null | undefined, stderr: Buffer[], path: string): void {
  if (end && end.type === 'exit' && end.exitCode === 0) return;
  if (!end || end.type !== 'exit') {
    throw new OpenShellError('RELAY_LOST', end && end.type === 'error' ? end.message : 'file transfer ended without a status');
  }
  const message = Buffer.concat(stderr).toString().trim() || `exit code ${end.exitCode}`;
  if (/No such file|Cannot open|cannot stat/i.test(message)) {
    throw new OpenShellError('NOT_FOUND', `${path}: no such file or directory`, { details: { path } });
  }
  if (/Is a directory/i.test(message)) throw invalidArgument('path', `${path} is a directory (use ?format=tar)`);
  throw new OpenShellError('INVALID_ARGUMENT', `${path}: ${message}`, { details: { field: 'path' } });
}

function checkPath(path: string): void {
  if (!path) throw invalidArgument('path', 'required');
  if (path.includes('\0')) throw invalidArgument('path', 'must not contain NUL');
  if (path.length > 4096) throw invalidArgument('path', 'too long');
}

import type { ExecEvent, ExecResult } from '../schemas/sandbox.js';
import type { ExecRun, RunEvent } from './exec-run.js';

/** A `keepalive` line after this long without output (DESIGN.md). */
export const KEEPALIVE_AFTER_MS = 15_000;

/**
 * The NDJSON lines of an exec response: `started`, output with offsets,
 * `keepalive` after 15 s of silence, and exactly one terminal line. Lines are
 * Buffers; output lines are assembled without JSON.stringify (base64 needs no
 * escaping), which keeps bulk output cheap. `onEnd` gets the terminal type.
 */
export async function* execLines(
  run: ExecRun,
  keepaliveMs = KEEPALIVE_AFTER_MS,
  onEnd?: (outcome: 'exit' | 'error') => void,
): AsyncGenerator<Buffer> {
  const it = run[Symbol.asyncIterator]();
  let next = it.next();
  for (;;) {
    let timer: NodeJS.Timeout | undefined;
    const tick = new Promise<'tick'>((resolve) => (timer = setTimeout(() => resolve('tick'), keepaliveMs)));
    const result = await Promise.race([next, tick]);
    clearTimeout(timer);
    if (result === 'tick') {
      yield KEEPALIVE_LINE;
      continue;
    }
    if (result.done) return;
    next = it.next();
    const event = result.value;
    if (event.type === 'stdout' || event.type === 'stderr') {
      yield Buffer.from(
        `{"type":"${event.type}","data":"${event.data.toString('base64')}","offset":${event.offset}}\n`,
        'latin1',
      );
      continue;
    }
    yield Buffer.from(line(toApiEvent(event)));
    if (event.type === 'exit' || event.type === 'error') {
      onEnd?.(event.type);
      return;
    }
  }
}

const KEEPALIVE_LINE = Buffer.from('{"type":"keepalive"}\n');

/** Buffers a whole run for `Accept: application/json`; an `error` terminal event is thrown back as-is. */
export async function collectExec(run: ExecRun): Promise<ExecResult | Extract<ExecEvent, { type: 'error' }>> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  for await (const event of run) {
    if (event.type === 'stdout') out.push(event.data);
    else if (event.type === 'stderr') err.push(event.data);
    else if (event.type === 'exit') {
      return {
        exitCode: event.exitCode,
        signal: event.signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        durationMs: event.durationMs,
        ...(event.timedOut ? { timedOut: true } : {}),
      };
    } else if (event.type === 'error') return event;
  }
  return { type: 'error', code: 'INTERNAL', message: 'exec ended without a status' };
}

function toApiEvent(event: RunEvent): ExecEvent {
  if (event.type === 'stdout' || event.type === 'stderr') {
    return { type: event.type, data: event.data.toString('base64'), offset: event.offset };
  }
  if (event.type === 'started') return { type: 'started', execId: event.execId };
  return event as Extract<ExecEvent, { type: 'exit' | 'error' }>;
}

function line(event: ExecEvent): string {
  return `${JSON.stringify(event)}\n`;
}

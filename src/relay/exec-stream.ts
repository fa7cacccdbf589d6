import { Readable } from 'node:stream';
import type { ExecEvent, ExecResult } from '../schemas/sandbox.js';
import { isTerminal, type ExecRun, type RunEvent } from './exec-run.js';

/** A `keepalive` line after this long without output (DESIGN.md). */
export const KEEPALIVE_AFTER_MS = 15_000;

/** Bytes of NDJSON the response stream buffers ahead of a slow HTTP reader. */
const STREAM_HIGH_WATER = 1024 * 1024;
/** Output lines queued together are coalesced into one chunk up to about this size. */
const COALESCE_BYTES = 256 * 1024;
const SLAB_BYTES = 1024 * 1024;

/**
 * The NDJSON body of an exec response as a byte stream: `started`, output
 * with offsets, `keepalive` after `keepaliveMs` without any event from the
 * relay, and exactly one terminal line, then end. Output lines are built
 * without JSON.stringify (base64 needs no escaping), and the lines of events
 * already queued are coalesced into one chunk, so bulk output costs a few
 * buffer copies and no promise per chunk. Backpressure: the stream only takes
 * events from the run while its buffer is below 1 MiB; the run pauses its
 * relay socket when its own queue is long, which reaches the process.
 * `onEnd` gets the terminal type.
 */
export function execReadable(
  run: ExecRun,
  keepaliveMs = KEEPALIVE_AFTER_MS,
  onEnd?: (outcome: 'exit' | 'error') => void,
): Readable {
  let lastEvent = performance.now();
  let timer: NodeJS.Timeout | null = null;
  let waiting = false;
  let ended = false;
  const stopTimer = (): void => {
    if (timer) clearTimeout(timer);
    timer = null;
  };
  const armTimer = (ms: number): void => {
    timer = setTimeout(() => {
      timer = null;
      if (ended || stream.destroyed) return;
      const idle = performance.now() - lastEvent;
      if (idle + 1 < keepaliveMs) return armTimer(keepaliveMs - idle);
      // Silence from the relay: tell the caller we are alive.
      if (run.queued === 0) stream.push(KEEPALIVE_LINE);
      lastEvent = performance.now();
      armTimer(keepaliveMs);
    }, ms);
  };
  // Lines are written straight into a slab; a chunk pushed is a view of it
  // (no concatenation copy), and the slab's rest serves the next chunk.
  let slab = Buffer.allocUnsafe(0);
  let start = 0;
  let used = 0;
  const reserve = (n: number): void => {
    if (used + n <= slab.length) return;
    const carry = used - start;
    const next = Buffer.allocUnsafe(Math.max(SLAB_BYTES, carry + n));
    slab.copy(next, 0, start, used);
    slab = next;
    start = 0;
    used = carry;
  };
  const flush = (): boolean => {
    if (used === start) return true;
    const chunk = slab.subarray(start, used);
    start = used;
    return stream.push(chunk);
  };
  const pump = (): void => {
    waiting = false;
    if (ended || stream.destroyed) return;
    for (;;) {
      const event = run.shift();
      if (!event) {
        // A full buffer waits for read(); otherwise wait for the relay.
        if (flush()) {
          waiting = true;
          run.onReady(pump);
        }
        return;
      }
      lastEvent = performance.now();
      if (event.type === 'stdout' || event.type === 'stderr') {
        const head = event.type === 'stdout' ? STDOUT_HEAD : STDERR_HEAD;
        const { data, offset } = event;
        // One line per LINE_BYTES of output: each line's base64 string stays
        // small for the encoder here and for the caller's JSON parser.
        for (let i = 0; i < data.length; i += LINE_BYTES) {
          const piece = data.subarray(i, Math.min(data.length, i + LINE_BYTES));
          const tail = `","offset":${offset + i}}\n`;
          reserve(head.length + Math.ceil(piece.length / 3) * 4 + tail.length);
          used += head.copy(slab, used);
          used += slab.write(piece.toString('base64'), used, 'latin1');
          used += slab.write(tail, used, 'latin1');
        }
        if (used - start >= COALESCE_BYTES && !flush()) return;
        continue;
      }
      const text = line(toApiEvent(event));
      reserve(Buffer.byteLength(text));
      used += slab.write(text, used, 'utf8');
      if (isTerminal(event)) {
        flush();
        ended = true;
        stopTimer();
        onEnd?.(event.type === 'running' ? 'exit' : event.type);
        stream.push(null);
        return;
      }
    }
  };
  const stream = new Readable({
    highWaterMark: STREAM_HIGH_WATER,
    read() {
      if (!waiting) pump();
    },
    destroy(err, cb) {
      ended = true;
      stopTimer();
      cb(err);
    },
  });
  armTimer(keepaliveMs);
  return stream;
}

/**
 * Output bytes per NDJSON line, at most. A base64 string over 128 KiB (96 KiB
 * of input) goes to V8's large object space, which costs 7 to 15 times more
 * per byte than a young-generation string here (up to about 1 MB, where Node
 * makes it external), both for our encoder and for the caller's JSON.parse;
 * relay frames are 64 to 128 KiB, so a frame may become two lines.
 */
export const LINE_BYTES = 64 * 1024;

const STDOUT_HEAD = Buffer.from('{"type":"stdout","data":"');
const STDERR_HEAD = Buffer.from('{"type":"stderr","data":"');
const KEEPALIVE_LINE = Buffer.from('{"type":"keepalive"}\n');

/**
 * Buffers a run for `Accept: application/json`, keeping at most `limitBytes`
 * of each stream: the tail, where a test run's summary is. A stream past the
 * limit is flagged (`stdoutTruncated`, `stdoutBytes` = its whole size), so a
 * huge output never costs the gateway more than the limit and the exit code
 * still arrives. An `error` terminal event is returned as-is.
 */
export async function collectExec(
  run: ExecRun,
  limitBytes = Number.MAX_SAFE_INTEGER,
): Promise<ExecResult | Extract<ExecEvent, { type: 'error' }>> {
  const out = new TailBuffer(limitBytes);
  const err = new TailBuffer(limitBytes);
  for await (const event of run) {
    if (event.type === 'stdout') out.push(event.data);
    else if (event.type === 'stderr') err.push(event.data);
    else if (event.type === 'exit') {
      return {
        exitCode: event.exitCode,
        signal: event.signal,
        stdout: out.text(),
        stderr: err.text(),
        durationMs: event.durationMs,
        ...(event.timedOut ? { timedOut: true } : {}),
        ...(out.truncated ? { stdoutTruncated: true, stdoutBytes: out.total } : {}),
        ...(err.truncated ? { stderrTruncated: true, stderrBytes: err.total } : {}),
      };
    } else if (event.type === 'error') return event;
  }
  return { type: 'error', code: 'INTERNAL', message: 'exec ended without a status' };
}

/** The last `limit` bytes of a byte stream, and how many went by. */
export class TailBuffer {
  readonly #limit: number;
  readonly #chunks: Buffer[] = [];
  #head = 0;
  #kept = 0;
  total = 0;

  constructor(limit: number) {
    this.#limit = limit;
  }

  get truncated(): boolean {
    return this.total > this.#limit;
  }

  push(data: Buffer): void {
    this.total += data.length;
    this.#chunks.push(data);
    this.#kept += data.length;
    // Drop whole chunks that lie entirely before the tail.
    while (this.#kept - this.#chunks[this.#head]!.length >= this.#limit) {
      this.#kept -= this.#chunks[this.#head]!.length;
      this.#head++;
    }
    if (this.#head > 64 && this.#head * 2 > this.#chunks.length) {
      this.#chunks.splice(0, this.#head);
      this.#head = 0;
    }
  }

  /** The kept bytes as UTF-8; a cut tail starts at the next character boundary. */
  text(): string {
    let buf = Buffer.concat(this.#chunks.slice(this.#head));
    if (buf.length > this.#limit) {
      let start = buf.length - this.#limit;
      // Skip UTF-8 continuation bytes (10xxxxxx) of a character cut in two.
      for (let i = 0; i < 3 && start < buf.length && (buf[start]! & 0xc0) === 0x80; i++) start++;
      buf = buf.subarray(start);
    }
    return buf.toString('utf8');
  }
}

function toApiEvent(event: RunEvent): ExecEvent {
  if (event.type === 'stdout' || event.type === 'stderr') {
    return { type: event.type, data: event.data.toString('base64'), offset: event.offset };
  }
  if (event.type === 'started') return { type: 'started', execId: event.execId };
  return event as Extract<ExecEvent, { type: 'exit' | 'error' | 'running' }>;
}

function line(event: ExecEvent): string {
  return `${JSON.stringify(event)}\n`;
}

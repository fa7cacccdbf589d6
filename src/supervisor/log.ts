import { JsonText, type JsonBytes, type Logger } from '../log.js';
import { isoNow } from '../iso-time.js';

type Level = 'debug' | 'info' | 'warn' | 'error';
/** Takes a written line's UTF-8 bytes, `bytes[start, end)`, and its pino level. */
export type LineSink = (bytes: Buffer, start: number, end: number, level: number) => void;
const LEVELS: Record<Level, number> = { debug: 20, info: 30, warn: 40, error: 50 };
const SECRET_KEYS = /token|authorization|password|secret/i;
/** Keys every line has of its own: a field of that name is written as `_level`, `_time`, `_msg`. */
const LINE_KEYS = new Set(['level', 'time', 'msg']);

/**
 * The supervisor's logger: pino JSON lines on stdout (the driver keeps
 * them), and the same lines handed to `sink` for forwarding to the gateway's
 * logs (the gateway reads pino lines, see `src/sandboxes/logs.ts`). Lean on
 * purpose: it is on the start-up path, and the egress proxy logs a decision
 * per L7 request. A line is written as UTF-8 straight into the batch, piece
 * by piece, from bytes kept between lines where it can (a field to redact
 * or rename takes a string path); `sink` copies its bytes, and lines go out
 * in batches (see `LineBuffer`).
 */
export function createSupervisorLogger(opts: {
  level?: Level;
  /**
   * Gets each line written: its UTF-8 JSON, without the newline, in
   * `bytes[start, end)`, and its pino level (30 info, 40 warn…). The bytes
   * are reused after the call returns.
   */
  sink?: LineSink;
  bindings?: Record<string, unknown>;
  /** Writes whole lines; `bytes` is reused after it returns. Default: a copy to stdout. */
  write?: (bytes: Buffer) => void;
}): Logger {
  const min = LEVELS[opts.level ?? 'info'];
  const sink = opts.sink;
  const out = new LineBuffer(opts.write ?? ((bytes: Buffer) => process.stdout.write(Buffer.from(bytes))));
  const make = (bindings: Record<string, unknown>): Logger => {
    // The bindings are redacted and serialised once per logger, not per line.
    const fixed = fieldsOf(bindings, {});
    const fixedJson = comma(jsonMembers(fixed));
    const plainKeys = new KeyVerdicts(fixed);
    const emit = (level: Level) => {
      const n = LEVELS[level];
      const head = `{"level":${n},"time":"`;
      // The line's start, through the bindings, for the time of the last line (lines within a millisecond share it).
      const start = lastBytes((iso) => `${head}${iso}"${fixedJson}`);
      return (obj: object, msg?: string) => {
        if (n < min) return;
        const extra = obj as Record<string, unknown>;
        const asIs = plainKeys.plain(extra);
        // A line logged while another is being built (from a field's toJSON) is added whole after it.
        if (asIs && !out.building) {
          // Fields as they are: the line is written into the batch piece by piece.
          out.begin();
          try {
            out.bytes(start(isoNow()));
            for (const k in extra) {
              const v = extra[k];
              if (v instanceof JsonText) {
                out.bytes(keyBytes(k));
                v.writeJson(out);
              } else if (typeof v === 'string') {
                out.bytes(keyBytes(k));
                out.string(v);
              } else {
                const text = JSON.stringify(v) as string | undefined;
                if (text === undefined) continue;
                out.bytes(keyBytes(k));
                out.text(text);
              }
            }
            if (msg !== undefined) out.bytes(msgBytes(msg));
            out.bytes(CLOSE);
          } catch (err) {
            out.cancel();
            throw err;
          }
          if (out.end(n, sink)) return;
          // Did not fit in the batch (a line of kilobytes): serialised again as one string and written whole,
          // still as the line being built. Its fields run again: the lines they log this time are dropped
          // (those of the first run are kept, and added after it).
          let line: string;
          try {
            line = `${head}${isoNow()}"${fixedJson}${comma(jsonMembers(extra))}${msg === undefined ? '' : `,"msg":${JSON.stringify(msg)}`}}`;
          } catch (err) {
            out.cancel();
            throw err;
          }
          return out.endWith(line, n, sink);
        }
        // A field to redact or rename, or one that is also a binding, or a line logged while another is built.
        const members = asIs ? fixedJson + comma(jsonMembers(extra)) : comma(jsonMembers(fieldsOf(extra, fixed)));
        out.add(`${head}${isoNow()}"${members}${msg === undefined ? '' : `,"msg":${JSON.stringify(msg)}`}}`, n, sink);
      };
    };
    return {
      debug: emit('debug'),
      info: emit('info'),
      warn: emit('warn'),
      error: emit('error'),
      child: (more) => make({ ...bindings, ...more }),
    };
  };
  return make(opts.bindings ?? {});
}

const CLOSE = Buffer.from('}');

/**
 * Whether a field goes into a line as it is: not a secret, not named like
 * a line key or a binding. Kept per key name (field names come from code,
 * a handful per logger), forgotten past 256.
 */
class KeyVerdicts {
  readonly #fixed: Record<string, unknown>;
  readonly #verdicts = new Map<string, boolean>();

  constructor(fixed: Record<string, unknown>) {
    this.#fixed = fixed;
  }

  /** True if `o`'s fields go into a line as they are: plain keys, own, and no error values. */
  plain(o: Record<string, unknown>): boolean {
    for (const k in o) {
      if (!Object.hasOwn(o, k) || !this.#key(k) || o[k] instanceof Error) return false;
    }
    return true;
  }

  #key(k: string): boolean {
    let v = this.#verdicts.get(k);
    if (v === undefined) {
      v = !(k in this.#fixed || LINE_KEYS.has(k) || SECRET_KEYS.test(k));
      if (this.#verdicts.size >= 256) this.#verdicts.clear();
      this.#verdicts.set(k, v);
    }
    return v;
  }
}

/**
 * The fields a line holds: `fixed` (already redacted), then `o`'s own
 * fields, redacted; a field named like a binding is written once, with
 * `o`'s value, and one named like a line key gets a `_` in front.
 */
function fieldsOf(o: Record<string, unknown>, fixed: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...fixed };
  for (const k in o) {
    if (!Object.hasOwn(o, k)) continue;
    const value = o[k];
    const key = LINE_KEYS.has(k) ? `_${k}` : k;
    if (SECRET_KEYS.test(k)) out[key] = '[Redacted]';
    else if (value instanceof Error) out[key] = { type: value.name, message: value.message };
    else out[key] = value;
  }
  return out;
}

/**
 * Log lines for the gateway kept between sends: the newest `maxLines` that
 * fit in `maxBytes`, older ones overwritten. They are held as UTF-8 bytes in
 * one off-heap buffer, not as strings: lines held for a send interval would
 * survive young GCs, and a flood of decisions (one per L7 request) made
 * every scavenge copy thousands of them (2 ms pauses instead of 0.3). The
 * control message is built from the bytes too (`LogRing.joined`).
 */
export class LogRing {
  readonly #buf: Buffer;
  readonly #start: Int32Array;
  readonly #len: Int32Array;
  /** Slot of the oldest line. */
  #first = 0;
  #size = 0;
  /** Byte offset just past the newest line. */
  #pos = 0;

  constructor(
    readonly maxLines: number,
    maxBytes = 1 << 20,
  ) {
    this.#buf = Buffer.allocUnsafeSlow(maxBytes);
    this.#start = new Int32Array(maxLines);
    this.#len = new Int32Array(maxLines);
  }

  get size(): number {
    return this.#size;
  }

  /**
   * Keep the line `bytes[start, end)` (UTF-8), dropping the oldest lines it
   * needs room from. A line larger than the whole ring is not kept.
   */
  pushBytes(bytes: Buffer, start: number, end: number): void {
    const at = this.#place(end - start);
    if (at >= 0) bytes.copy(this.#buf, at, start, end);
  }

  /**
   * `open`, the lines of each ring in turn (oldest first) joined by commas,
   * then `close`, as UTF-8: a JSON array of JSON lines, inside a message.
   */
  static joined(rings: LogRing[], open: string, close: string): Buffer {
    const head = Buffer.from(open);
    const tail = Buffer.from(close);
    let bytes = 0;
    let lines = 0;
    for (const r of rings) {
      for (let i = 0; i < r.#size; i++) bytes += r.#len[(r.#first + i) % r.maxLines]!;
      lines += r.#size;
    }
    const out = Buffer.allocUnsafe(head.length + bytes + Math.max(0, lines - 1) + tail.length);
    let at = head.copy(out, 0);
    let first = true;
    for (const r of rings) {
      for (let i = 0; i < r.#size; i++) {
        if (!first) out[at++] = 0x2c; // ','
        first = false;
        const slot = (r.#first + i) % r.maxLines;
        const s = r.#start[slot]!;
        at += r.#buf.copy(out, at, s, s + r.#len[slot]!);
      }
    }
    tail.copy(out, at);
    return out;
  }

  clear(): void {
    this.#first = this.#size = this.#pos = 0;
  }

  /** Where a line of `n` bytes goes, after dropping the lines in its way; -1 if it can never fit. */
  #place(n: number): number {
    const cap = this.#buf.length;
    if (n > cap || this.maxLines === 0) return -1;
    let at = this.#pos;
    if (at + n > cap) {
      // Wrap: the lines from here to the end are the oldest, from the lap before.
      while (this.#size > 0 && this.#start[this.#first]! >= at) this.#dropOldest();
      at = 0;
    }
    while (this.#size > 0 && (this.#size === this.maxLines || this.#overlaps(this.#first, at, n))) this.#dropOldest();
    const slot = (this.#first + this.#size) % this.maxLines;
    this.#start[slot] = at;
    this.#len[slot] = n;
    this.#size++;
    this.#pos = at + n;
    return at;
  }

  #overlaps(slot: number, at: number, n: number): boolean {
    const s = this.#start[slot]!;
    return s < at + n && at < s + this.#len[slot]!;
  }

  #dropOldest(): void {
    this.#first = (this.#first + 1) % this.maxLines;
    this.#size--;
  }
}

// Lines are encoded into a buffer this large, written when it is full or
// FLUSH_MS after its first line. At a line per request, a batch timer that
// fires (every 10 ms, as it once did) cost the egress proxy 1.2 µs more CPU
// per request at one request at a time than batches that fill first;
// the gateway's share goes every 200 ms anyway.
const BATCH_BYTES = 64 * 1024;
const FLUSH_MS = 100;
/** A line built in place starts with at least this much room: a fuller batch is written first. */
const LINE_ROOM = 4096;
/** Strings up to this long are checked and copied a character at a time (`LineBuffer.string`). */
const SHORT_STRING = 128;
/** Buffers holding lines not yet written, flushed at exit if their time has not come. */
const unflushed = new Set<LineBuffer>();
let exitHook = false;

/**
 * Log lines written in batches instead of one write per line: each write
 * to the driver's file or pipe is a syscall (2–6 µs) and wakes a reader,
 * and the egress proxy logs a line per L7 request. Each line is encoded
 * into one reused buffer as it is logged (and its bytes handed to the sink
 * from there): built in place piece by piece (`begin`, the `JsonBytes`
 * methods, `end`), or added as a string (`add`). The buffer is written
 * FLUSH_MS after its first line, at once when the next line does not fit,
 * and synchronously at process exit (also after an uncaught exception), so
 * no line is lost and the order is kept.
 */
class LineBuffer implements JsonBytes {
  readonly #write: (bytes: Buffer) => void;
  readonly #buf = Buffer.allocUnsafeSlow(BATCH_BYTES);
  #pos = 0;
  /** Where the line being built in place starts. */
  #lineStart = 0;
  /** The line being built in place did not fit. */
  #over = false;
  /** A line is being built in place (between `begin` and `end` or `cancel`). */
  #building = false;
  /** Lines added while one was being built in place: added after it. */
  #deferred: { line: string; level: number; sink: LineSink | undefined }[] = [];
  /** The line being built is serialised a second time (see `end`): lines added meanwhile are dropped. */
  #muted = false;
  /** Writes the batch FLUSH_MS after its first line; cleared when the batch goes out sooner. */
  #timer: NodeJS.Timeout | undefined;

  constructor(write: (bytes: Buffer) => void) {
    this.#write = write;
  }

  get building(): boolean {
    return this.#building;
  }

  /** Adds `line` (JSON, no newline) and hands its bytes and `level` to `sink`. */
  add(line: string, level: number, sink: LineSink | undefined): void {
    if (this.#building) {
      if (!this.#muted) this.#deferred.push({ line, level, sink });
      return;
    }
    // A UTF-16 code unit is at most 3 bytes of UTF-8 (a surrogate pair, two units, is 4).
    const most = line.length * 3 + 1;
    if (most > BATCH_BYTES - this.#pos) {
      this.flush();
      if (most > BATCH_BYTES) {
        const bytes = Buffer.from(`${line}\n`);
        sink?.(bytes, 0, bytes.length - 1, level);
        return this.#out(bytes);
      }
    }
    const start = this.#pos;
    this.#pos += this.#buf.write(line, start, 'utf8');
    this.#close(start, level, sink);
  }

  /** Starts a line built in place: the `JsonBytes` methods, then `end` (or `cancel`). */
  begin(): void {
    if (BATCH_BYTES - this.#pos < LINE_ROOM) this.flush();
    this.#lineStart = this.#pos;
    this.#over = false;
    this.#building = true;
  }

  bytes(b: Uint8Array): void {
    const n = b.length;
    const at = this.#pos;
    // One byte is kept for the newline.
    if (at + n >= BATCH_BYTES) this.#over = true;
    else {
      // A call to set costs more than copying a few bytes.
      if (n > 8) this.#buf.set(b, at);
      else for (let i = 0; i < n; i++) this.#buf[at + i] = b[i]!;
      this.#pos = at + n;
    }
  }

  text(s: string): void {
    if (this.#pos + s.length * 3 >= BATCH_BYTES) this.#over = true;
    else this.#pos += this.#buf.write(s, this.#pos, 'utf8');
  }

  string(s: string): void {
    const n = s.length;
    const at = this.#pos;
    if (n > SHORT_STRING || at + n + 2 >= BATCH_BYTES) return this.text(JSON.stringify(s));
    // Printable ASCII other than `"` and `\` is its own JSON and its own UTF-8.
    const buf = this.#buf;
    buf[at] = 0x22; // '"'
    for (let i = 0; i < n; i++) {
      const c = s.charCodeAt(i);
      if (c < 0x20 || c > 0x7e || c === 0x22 || c === 0x5c) return this.text(JSON.stringify(s));
      buf[at + 1 + i] = c;
    }
    buf[at + 1 + n] = 0x22;
    this.#pos = at + n + 2;
  }

  /**
   * Ends the line built in place, as `add` does. False if it did not fit:
   * nothing of it is kept, and the caller ends it with `endWith` (or
   * `cancel`); until then lines added are dropped, since the caller runs
   * the line's fields again (the lines they logged the first time are kept).
   */
  end(level: number, sink: LineSink | undefined): boolean {
    if (this.#over) {
      this.#pos = this.#lineStart;
      this.#over = false;
      this.#muted = true;
      return false;
    }
    this.#building = false;
    this.#close(this.#lineStart, level, sink);
    this.#addDeferred();
    return true;
  }

  /** Ends the line being built, which did not fit in place, with its whole text. */
  endWith(line: string, level: number, sink: LineSink | undefined): void {
    this.#building = false;
    this.#muted = false;
    this.add(line, level, sink);
    this.#addDeferred();
  }

  /** Drops the line being built in place. */
  cancel(): void {
    this.#pos = this.#lineStart;
    this.#building = false;
    this.#muted = false;
    this.#addDeferred();
  }

  #addDeferred(): void {
    if (this.#deferred.length === 0) return;
    const lines = this.#deferred;
    this.#deferred = [];
    for (const d of lines) this.add(d.line, d.level, d.sink);
  }

  /** The line `[start, #pos)` is whole: hand it to `sink`, end it, and make sure the batch is written. */
  #close(start: number, level: number, sink: LineSink | undefined): void {
    const end = this.#pos;
    sink?.(this.#buf, start, end, level);
    this.#buf[end] = 0x0a; // '\n'
    this.#pos = end + 1;
    if (start === 0) {
      unflushed.add(this);
      if (!exitHook) {
        exitHook = true;
        process.once('exit', () => unflushed.forEach((b) => b.flush()));
      }
      this.#timer = setTimeout(this.flush, FLUSH_MS);
    }
  }

  readonly flush = (): void => {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#pos === 0) return;
    const bytes = this.#buf.subarray(0, this.#pos);
    this.#pos = 0;
    unflushed.delete(this);
    this.#out(bytes);
  };

  #out(bytes: Buffer): void {
    try {
      this.#write(bytes);
    } catch {
      // The driver stopped reading (EPIPE): stdout lines are lost either way; the gateway still gets them through `sink`.
    }
  }
}

/** The UTF-8 bytes of the last string asked for, made by `build`: a flood of lines repeats a few. */
function lastBytes(build: (s: string) => string): (s: string) => Buffer {
  let last: string | undefined;
  let bytes = Buffer.alloc(0);
  return (s) => {
    if (s !== last) {
      last = s;
      bytes = Buffer.from(build(s));
    }
    return bytes;
  };
}

const msgBytes = lastBytes((msg) => `,"msg":${JSON.stringify(msg)}`);
/** `,"key":` for each field name seen (names come from code), forgotten past 256. */
const keyBytesMap = new Map<string, Buffer>();
function keyBytes(k: string): Buffer {
  let b = keyBytesMap.get(k);
  if (b === undefined) {
    if (keyBytesMap.size >= 256) keyBytesMap.clear();
    b = Buffer.from(`,${JSON.stringify(k)}:`);
    keyBytesMap.set(k, b);
  }
  return b;
}

/**
 * An object's own fields as JSON members, without the braces ('' for
 * none): to splice into a line. A `JsonText` value is spliced in as its own
 * text.
 */
function jsonMembers(o: Record<string, unknown>): string {
  let own = false;
  for (const k in o) if (o[k] instanceof JsonText) own = true;
  if (!own) {
    const s = JSON.stringify(o);
    return s.length > 2 ? s.slice(1, -1) : '';
  }
  let s = '';
  for (const k in o) {
    if (!Object.hasOwn(o, k)) continue;
    const v = o[k];
    const text = v instanceof JsonText ? v.json() : (JSON.stringify(v) as string | undefined);
    if (text !== undefined) s += `${s === '' ? '' : ','}${JSON.stringify(k)}:${text}`;
  }
  return s;
}

function comma(members: string): string {
  return members === '' ? '' : `,${members}`;
}

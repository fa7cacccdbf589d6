import { JsonText, type Logger } from '../log.js';
import type { LogLine } from '../protocol/control.js';
import { isoNow } from '../iso-time.js';

type Level = LogLine['level'];
const LEVELS: Record<Level, number> = { debug: 20, info: 30, warn: 40, error: 50 };
const SECRET_KEYS = /token|authorization|password|secret/i;

/**
 * The supervisor's logger: pino-compatible JSON lines on stdout (the driver
 * keeps them), and every line at `info` or above handed to `sink` for
 * forwarding to the gateway's logs. Lean on purpose: it is on the start-up
 * path, and the egress proxy logs a decision per L7 request. Lines go out
 * in one write per event-loop turn (see `LineBuffer`).
 */
export function createSupervisorLogger(opts: {
  level?: Level;
  /** Gets each line for the gateway as the JSON text of a `LogLine` (see `LogRing`). */
  sink?: (line: string) => void;
  bindings?: Record<string, unknown>;
  write?: (text: string) => void;
}): Logger {
  const min = LEVELS[opts.level ?? 'info'];
  const sink = opts.sink;
  const out = new LineBuffer(opts.write ?? ((text: string) => process.stdout.write(text)));
  const make = (bindings: Record<string, unknown>): Logger => {
    // The bindings are redacted and serialised once per logger, not per line.
    const fixed = redact(bindings);
    const fixedJson = jsonMembers(fixed);
    const emit = (level: Level) => (obj: object, msg?: string) => {
      if (LEVELS[level] < min) return;
      const extra = redact(obj as Record<string, unknown>);
      const time = isoNow();
      let clash = false;
      for (const k in extra) if (k in fixed || k === 'level' || k === 'time' || k === 'msg') clash = true;
      const component = 'component' in extra ? extra.component : fixed.component;
      const source = component === 'egress' ? 'egress' : 'supervisor';
      if (clash) {
        // A key of obj that is also a binding is written once, with obj's value.
        const fields = { ...fixed, ...extra };
        out.add(`${JSON.stringify({ level: LEVELS[level], time, ...fields, msg })}\n`);
        sink?.(JSON.stringify({ time, level, source, message: msg ?? '', fields } satisfies LogLine));
        return;
      }
      // The same JSON as the objects above would give, the fields serialised once for both.
      const members = comma(fixedJson) + comma(jsonMembers(extra));
      const message = msgJson(msg ?? '');
      out.add(`{"level":${LEVELS[level]},"time":"${time}"${members}${msg === undefined ? '' : `,"msg":${message}`}}\n`);
      sink?.(`{"time":"${time}","level":"${level}","source":"${source}","message":${message},"fields":{${members.slice(1)}}}`);
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

/**
 * Log lines for the gateway (the JSON text of `LogLine`s) kept between
 * sends: the newest `maxLines` that fit in `maxBytes`, older ones
 * overwritten. They are held as bytes in one off-heap buffer, not as
 * strings: lines held for a send interval would survive young GCs, and a
 * flood of decisions (one per L7 request) made every scavenge copy
 * thousands of them (2 ms pauses instead of 0.3).
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

  /** Keep `line`, dropping the oldest lines it needs room from. A line larger than the whole ring is not kept. */
  push(line: string): void {
    const n = Buffer.byteLength(line);
    const cap = this.#buf.length;
    if (n > cap || this.maxLines === 0) return;
    let at = this.#pos;
    if (at + n > cap) {
      // Wrap: the lines from here to the end are the oldest, from the lap before.
      while (this.#size > 0 && this.#start[this.#first]! >= at) this.#dropOldest();
      at = 0;
    }
    while (this.#size > 0 && (this.#size === this.maxLines || this.#overlaps(this.#first, at, n))) this.#dropOldest();
    this.#buf.write(line, at, 'utf8');
    const slot = (this.#first + this.#size) % this.maxLines;
    this.#start[slot] = at;
    this.#len[slot] = n;
    this.#size++;
    this.#pos = at + n;
  }

  /** The lines, oldest first. */
  lines(): string[] {
    const out: string[] = [];
    for (let i = 0; i < this.#size; i++) {
      const slot = (this.#first + i) % this.maxLines;
      const s = this.#start[slot]!;
      out.push(this.#buf.toString('utf8', s, s + this.#len[slot]!));
    }
    return out;
  }

  clear(): void {
    this.#first = this.#size = this.#pos = 0;
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

// A buffer this large is written at once, not at the end of the turn.
const FLUSH_AT = 64 * 1024;
/** Buffers holding lines not yet written, flushed at exit if their turn has not come. */
const unflushed = new Set<LineBuffer>();
let exitHook = false;

/**
 * Log lines written once per event-loop turn instead of one write per line
 * (each write to the driver's file or pipe is a syscall, and wakes a reader): lines
 * logged during a turn are joined and written in `setImmediate`, at once
 * past FLUSH_AT, and synchronously at process exit (also after an uncaught
 * exception), so no line is lost and the order is kept.
 */
class LineBuffer {
  readonly #write: (text: string) => void;
  #text = '';

  constructor(write: (text: string) => void) {
    this.#write = write;
  }

  add(line: string): void {
    const first = this.#text === '';
    this.#text += line;
    if (this.#text.length >= FLUSH_AT) return this.flush();
    if (first) {
      unflushed.add(this);
      if (!exitHook) {
        exitHook = true;
        process.once('exit', () => unflushed.forEach((b) => b.flush()));
      }
      setImmediate(this.flush);
    }
  }

  readonly flush = (): void => {
    const text = this.#text;
    if (text === '') return;
    this.#text = '';
    unflushed.delete(this);
    try {
      this.#write(text);
    } catch {
      // The driver stopped reading (EPIPE): stdout lines are lost either way; the gateway still gets them through `sink`.
    }
  };
}

let lastMsg = '';
let lastMsgJson = '""';

/** A message's JSON string; the last one is kept (a flood of lines is mostly one message, the egress decision's). */
function msgJson(msg: string): string {
  if (msg !== lastMsg) {
    lastMsg = msg;
    lastMsgJson = JSON.stringify(msg);
  }
  return lastMsgJson;
}

/**
 * An object's JSON without its braces ('' for none): members to splice into
 * a line. A `JsonText` value is spliced in as its own text.
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
    const v = o[k];
    const text = v instanceof JsonText ? v.json() : (JSON.stringify(v) as string | undefined);
    if (text !== undefined) s += `${s === '' ? '' : ','}${JSON.stringify(k)}:${text}`;
  }
  return s;
}

function comma(members: string): string {
  return members === '' ? '' : `,${members}`;
}

function redact(fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key in fields) {
    if (!Object.hasOwn(fields, key)) continue;
    const value = fields[key];
    if (SECRET_KEYS.test(key)) out[key] = '[Redacted]';
    else if (value instanceof Error) out[key] = { type: value.name, message: value.message };
    else out[key] = value;
  }
  return out;
}

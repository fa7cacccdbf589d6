import type { Logger } from '../log.js';
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
  sink?: (line: LogLine) => void;
  bindings?: Record<string, unknown>;
  write?: (text: string) => void;
}): Logger {
  const min = LEVELS[opts.level ?? 'info'];
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
      // {level, time, ...bindings, ...obj, msg}; a key of obj that is also a binding is written once, with obj's value.
      out.add(
        clash
          ? `${JSON.stringify({ level: LEVELS[level], time, ...fixed, ...extra, msg })}\n`
          : `{"level":${LEVELS[level]},"time":"${time}"${comma(fixedJson)}${comma(jsonMembers(extra))}${msg === undefined ? '' : `,"msg":${JSON.stringify(msg)}`}}\n`,
      );
      if (opts.sink) {
        const fields = { ...fixed, ...extra };
        opts.sink({ time, level, source: fields.component === 'egress' ? 'egress' : 'supervisor', message: msg ?? '', fields });
      }
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

// A buffer this large is written at once, not at the end of the turn.
const FLUSH_AT = 64 * 1024;
/** Buffers holding lines not yet written, flushed at exit if their turn has not come. */
const unflushed = new Set<LineBuffer>();
let exitHook = false;

/**
 * Log lines written once per event-loop turn instead of one write per line
 * (a write to the driver's pipe is a syscall and wakes the reader): lines
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

/** An object's JSON without its braces ('' for none): members to splice into a line. */
function jsonMembers(o: Record<string, unknown>): string {
  const s = JSON.stringify(o);
  return s.length > 2 ? s.slice(1, -1) : '';
}

function comma(members: string): string {
  return members === '' ? '' : `,${members}`;
}

function redact(fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(fields)) {
    if (SECRET_KEYS.test(key)) out[key] = '[Redacted]';
    else if (value instanceof Error) out[key] = { type: value.name, message: value.message };
    else out[key] = value;
  }
  return out;
}

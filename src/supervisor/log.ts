import type { Logger } from '../log.js';
import type { LogLine } from '../protocol/control.js';

type Level = LogLine['level'];
const LEVELS: Record<Level, number> = { debug: 20, info: 30, warn: 40, error: 50 };
const SECRET_KEYS = /token|authorization|password|secret/i;

/**
 * The supervisor's logger: pino-compatible JSON lines on stdout (the driver
 * keeps them), and every line at `info` or above handed to `sink` for
 * forwarding to the gateway's logs. Lean on purpose: it is on the start-up path.
 */
export function createSupervisorLogger(opts: {
  level?: Level;
  sink?: (line: LogLine) => void;
  bindings?: Record<string, unknown>;
  write?: (text: string) => void;
}): Logger {
  const min = LEVELS[opts.level ?? 'info'];
  const write = opts.write ?? ((text: string) => process.stdout.write(text));
  const make = (bindings: Record<string, unknown>): Logger => {
    const emit = (level: Level) => (obj: object, msg?: string) => {
      if (LEVELS[level] < min) return;
      const fields = redact({ ...bindings, ...obj });
      const time = new Date().toISOString();
      write(`${JSON.stringify({ level: LEVELS[level], time, ...fields, msg })}\n`);
      const source = fields.component === 'egress' ? 'egress' : 'supervisor';
      opts.sink?.({ time, level, source, message: msg ?? '', fields });
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

function redact(fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(fields)) {
    if (SECRET_KEYS.test(key)) out[key] = '[Redacted]';
    else if (value instanceof Error) out[key] = { type: value.name, message: value.message };
    else out[key] = value;
  }
  return out;
}

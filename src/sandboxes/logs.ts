import { EventEmitter } from 'node:events';
import type { LogLine } from '../protocol/control.js';

const MAX_LINES = 2000;
const MAX_MESSAGE = 8192;

/**
 * Supervisor and egress-decision log lines per sandbox, as forwarded over the
 * control session: a bounded ring per sandbox (newest kept), plus followers.
 * In memory: a gateway restart starts each sandbox's log afresh.
 */
export class SandboxLogs {
  readonly #lines = new Map<string, LogLine[]>();
  readonly #events = new EventEmitter<Record<string, [LogLine]>>();

  constructor() {
    this.#events.setMaxListeners(0);
  }

  append(sandboxId: string, lines: unknown): void {
    if (!Array.isArray(lines)) return;
    let ring = this.#lines.get(sandboxId);
    if (!ring) this.#lines.set(sandboxId, (ring = []));
    for (const raw of lines.slice(0, MAX_LINES)) {
      const line = sanitize(raw);
      if (!line) continue;
      ring.push(line);
      this.#events.emit(sandboxId, line);
    }
    if (ring.length > MAX_LINES) ring.splice(0, ring.length - MAX_LINES);
  }

  get(sandboxId: string): LogLine[] {
    return this.#lines.get(sandboxId)?.slice() ?? [];
  }

  /** Calls `listener` for every new line until the returned function is called. */
  follow(sandboxId: string, listener: (line: LogLine) => void): () => void {
    this.#events.on(sandboxId, listener);
    return () => this.#events.off(sandboxId, listener);
  }

  forget(sandboxId: string): void {
    this.#lines.delete(sandboxId);
  }
}

/** Lines come from inside the sandbox: keep only the known shape, bounded. */
function sanitize(raw: unknown): LogLine | null {
  if (typeof raw !== 'object' || raw === null) return null;
  const r = raw as Record<string, unknown>;
  return typeof r.level === 'number' ? fromPino(r, r.level) : fromLogLine(r);
}

/** A supervisor's pino line (`SupervisorLogLine`): `msg` is the message, the keys other than level, time and msg the fields. */
function fromPino(r: Record<string, unknown>, level: number): LogLine {
  // fromEntries defines each key as data, so a field named __proto__ stays a field.
  const entries = Object.entries(r).filter(([k]) => k !== 'level' && k !== 'time' && k !== 'msg');
  const fields = entries.length > 0 ? Object.fromEntries(entries) : undefined;
  return line(r.time, level >= 50 ? 'error' : level >= 40 ? 'warn' : level >= 30 ? 'info' : 'debug', r.component === 'egress', r.msg, fields);
}

/** A `LogLine`, as supervisors sent before they sent pino lines. */
function fromLogLine(r: Record<string, unknown>): LogLine {
  const level = ['debug', 'info', 'warn', 'error'].includes(r.level as string) ? (r.level as LogLine['level']) : 'info';
  return line(r.time, level, r.source === 'egress', r.message, typeof r.fields === 'object' && r.fields !== null ? (r.fields as Record<string, unknown>) : undefined);
}

function line(time: unknown, level: LogLine['level'], egress: boolean, message: unknown, fields: Record<string, unknown> | undefined): LogLine {
  return {
    time: typeof time === 'string' ? time.slice(0, 40) : new Date().toISOString(),
    level,
    source: egress ? 'egress' : 'supervisor',
    message: typeof message === 'string' ? message.slice(0, MAX_MESSAGE) : '',
    ...(fields ? { fields } : {}),
  };
}

import { EventEmitter } from 'node:events';
import type { LogLine } from '../protocol/control.js';

const MAX_LINES = 2000;
/** Warnings and errors kept past MAX_LINES, so a flood of info lines (allowed requests) does not push out a deny. */
const MAX_KEPT = 500;
const MAX_MESSAGE = 8192;

/** A line and its place in its sandbox's log. */
interface Entry {
  seq: number;
  line: LogLine;
}

/** One sandbox's log: the newest MAX_LINES lines, and the newest MAX_KEPT warnings and errors among all. */
interface SandboxLog {
  next: number;
  lines: Entry[];
  kept: Entry[];
}

/**
 * Supervisor and egress-decision log lines per sandbox, as forwarded over the
 * control session: a bounded ring per sandbox (newest kept) plus its newest
 * warnings and errors, and followers. A batch is put in time order (a
 * supervisor sends its warnings first). In memory: a gateway restart starts
 * each sandbox's log afresh.
 */
export class SandboxLogs {
  readonly #logs = new Map<string, SandboxLog>();
  readonly #events = new EventEmitter<Record<string, [LogLine]>>();

  constructor() {
    this.#events.setMaxListeners(0);
  }

  append(sandboxId: string, lines: unknown): void {
    if (!Array.isArray(lines)) return;
    let log = this.#logs.get(sandboxId);
    if (!log) this.#logs.set(sandboxId, (log = { next: 0, lines: [], kept: [] }));
    const batch = lines
      .slice(0, MAX_LINES + MAX_KEPT)
      .map(sanitize)
      .filter((line): line is LogLine => line !== null)
      .sort((a, b) => (a.time < b.time ? -1 : a.time > b.time ? 1 : 0));
    for (const line of batch) {
      const entry = { seq: log.next++, line };
      log.lines.push(entry);
      if (line.level === 'warn' || line.level === 'error') log.kept.push(entry);
      this.#events.emit(sandboxId, line);
    }
    if (log.lines.length > MAX_LINES) log.lines.splice(0, log.lines.length - MAX_LINES);
    if (log.kept.length > MAX_KEPT) log.kept.splice(0, log.kept.length - MAX_KEPT);
  }

  /** The sandbox's lines, oldest first: the warnings and errors that fell out of the ring, then the ring. */
  get(sandboxId: string): LogLine[] {
    const log = this.#logs.get(sandboxId);
    if (!log) return [];
    const first = log.lines[0]?.seq ?? log.next;
    return [...log.kept.filter((e) => e.seq < first), ...log.lines].map((e) => e.line);
  }

  /** Calls `listener` for every new line until the returned function is called. */
  follow(sandboxId: string, listener: (line: LogLine) => void): () => void {
    this.#events.on(sandboxId, listener);
    return () => this.#events.off(sandboxId, listener);
  }

  forget(sandboxId: string): void {
    this.#logs.delete(sandboxId);
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

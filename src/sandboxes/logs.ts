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
  const level = ['debug', 'info', 'warn', 'error'].includes(r.level as string) ? (r.level as LogLine['level']) : 'info';
  return {
    time: typeof r.time === 'string' ? r.time.slice(0, 40) : new Date().toISOString(),
    level,
    source: r.source === 'egress' ? 'egress' : 'supervisor',
    message: typeof r.message === 'string' ? r.message.slice(0, MAX_MESSAGE) : '',
    ...(typeof r.fields === 'object' && r.fields !== null ? { fields: r.fields as Record<string, unknown> } : {}),
  };
}

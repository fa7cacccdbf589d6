import { randomBytes } from 'node:crypto';
import { OpenShellError, invalidArgument } from '../errors.js';
import type { Logger } from '../log.js';
import type { ExecBody } from '../schemas/sandbox.js';
import type { SandboxService } from '../sandboxes/service.js';
import type { RelayBroker } from './broker.js';
import type { ExecStartOp } from '../protocol/exec.js';
import { ExecRun } from './exec-run.js';

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

export interface ExecStartOptions {
  /** Aborts when the caller goes away. */
  signal?: AbortSignal;
  /** Keep stdin open for the caller to stream (interactive exec). */
  interactiveStdin?: boolean;
  cols?: number;
  rows?: number;
}

export interface ExecMetrics {
  started(): void;
  /** An exec re-attached after its relay was lost. */
  resumed?(): void;
  finished(durationMs: number, outcome: string): void;
}

/** Starts execs in sandboxes over `exec` relays. */
export class ExecService {
  readonly #broker: RelayBroker;
  readonly #sandboxes: SandboxService;
  readonly #log: Logger;
  readonly #metrics: ExecMetrics | undefined;

  readonly #resumeWindowMs: number;
  /** Runs without a terminal event yet (what a shutdown must end). */
  readonly #active = new Set<ExecRun>();

  constructor(opts: { broker: RelayBroker; sandboxes: SandboxService; log: Logger; metrics?: ExecMetrics; resumeWindowMs?: number }) {
    this.#resumeWindowMs = opts.resumeWindowMs ?? 0;
    this.#broker = opts.broker;
    this.#sandboxes = opts.sandboxes;
    this.#log = opts.log.child({ component: 'exec' });
    this.#metrics = opts.metrics;
  }

  /**
   * Validates the request, waits for the sandbox's session (15 s), opens an
   * exec relay and starts the command. Throws SANDBOX_NOT_FOUND,
   * SANDBOX_NOT_READY, SESSION_UNAVAILABLE or RESOURCE_EXHAUSTED before
   * anything runs; after that, failures arrive as the run's terminal event.
   */
  async start(name: string, body: ExecBody, opts: ExecStartOptions = {}): Promise<ExecRun> {
    const command = typeof body.command === 'string' ? ['sh', '-c', body.command] : body.command;
    if (command[0] === '') throw invalidArgument('command[0]', 'must not be empty');
    const timeoutSeconds = body.timeoutSeconds ?? 0;
    if (!Number.isFinite(timeoutSeconds) || timeoutSeconds < 0) throw invalidArgument('timeoutSeconds', 'must be ≥ 0');
    let stdin: Buffer | undefined;
    if (body.stdin !== undefined) {
      if (body.stdin.length % 4 !== 0 || !BASE64.test(body.stdin)) throw invalidArgument('stdin', 'must be base64');
      stdin = Buffer.from(body.stdin, 'base64');
    }
    const record = await this.#sandboxes.getRecord(name);
    if (record.phase === 'Error' || record.phase === 'Deleting') {
      throw new OpenShellError('SANDBOX_NOT_READY', `sandbox "${name}" is ${record.phase}`, {
        details: { phase: record.phase, reason: record.condition.reason },
      });
    }
    const ws = await this.#broker.acquireExec(record.id, opts.signal);
    const execId = `ex_${randomBytes(10).toString('hex')}`;
    const noInput = !opts.interactiveStdin && (!stdin || stdin.length === 0);
    const start: ExecStartOp = {
      op: 'start',
      execId,
      command,
      env: body.env ?? {},
      ...(body.workdir ? { workdir: body.workdir } : {}),
      ...(body.user ? { user: body.user } : {}),
      tty: body.tty ?? false,
      ...(opts.cols ? { cols: opts.cols, rows: opts.rows } : {}),
      timeoutSeconds,
      ...(noInput ? { closeStdin: true } : {}),
    };
    const log = this.#log;
    // Resume needs nothing to re-send: stdin from the body is confirmed by the
    // supervisor before a resume may happen; a caller streaming stdin or a tty is never resumed.
    const resumable = !opts.interactiveStdin && !start.tty && this.#resumeWindowMs > 0;
    const run = new ExecRun(ws, start, {
      onRelease: (relay) => this.#broker.releaseExec(record.id, relay),
      ...(resumable
        ? {
            resume: {
              windowMs: this.#resumeWindowMs,
              reattach: (signal: AbortSignal) => this.#broker.acquireExec(record.id, signal),
              canResume: () => !this.#broker.closed,
              onResumed: (ms: number) => {
                this.#metrics?.resumed?.();
                log.info({ sandboxId: record.id, execId, lostForMs: Math.round(ms) }, 'exec re-attached after a lost relay');
              },
            },
          }
        : {}),
    });
    this.#active.add(run);
    void run.ended.then(() => this.#active.delete(run));
    this.#metrics?.started();
    this.#log.debug({ sandboxId: record.id, execId }, 'exec started');
    if (stdin && stdin.length > 0) run.writeStdin(stdin);
    if (!opts.interactiveStdin && !noInput) run.closeStdin();
    return run;
  }

  /**
   * Gateway shutdown: every exec still streaming ends with a `RELAY_LOST`
   * line saying so (its process keeps running in the sandbox); resolves once
   * each caller's stream took it, or after `timeoutMs`.
   */
  async shutdown(timeoutMs = 2000): Promise<void> {
    const runs = [...this.#active];
    if (runs.length === 0) return;
    for (const run of runs) run.shutdown('the gateway is shutting down; the process keeps running in the sandbox');
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(runs.map((r) => r.consumed)),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs))),
    ]);
    clearTimeout(timer);
    // Let the last lines reach the sockets before connections are closed.
    await new Promise<void>((resolve) => setImmediate(resolve));
  }

  /** Execs still waiting for their terminal event. */
  get activeCount(): number {
    return this.#active.size;
  }

  finished(durationMs: number, outcome: string): void {
    this.#metrics?.finished(durationMs, outcome);
  }
}

import { randomBytes } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { OpenShellApiError, OpenShellConnectionError } from './errors.js';

/** How a client exec survives a lost gateway connection (DESIGN.md, Idempotent start). */
export interface ExecResumeOptions {
  /**
   * Give up once the gateway has been unreachable (no progress at all) for
   * this long; the last error is thrown, naming the exec. Default 60 000;
   * 0 turns resume off (the first lost connection throws).
   */
  timeoutMs?: number;
  /** Called before each retry (for progress messages). */
  onRetry?: (info: { attempt: number; delayMs: number; error: Error; execId: string | undefined }) => void;
}

export const DEFAULT_RESUME_TIMEOUT_MS = 60_000;
const BACKOFF_START_MS = 100;
const BACKOFF_MAX_MS = 2000;

/** A requestId for a client exec: unique, and within DESIGN.md's `[A-Za-z0-9._:-]{1,128}`. */
export function newRequestId(): string {
  return `req_${Date.now().toString(36)}_${randomBytes(9).toString('hex')}`;
}

/** The gateway ended the stream saying the process keeps running (a shutdown): retry elsewhere. */
export class ResumableEnd extends Error {
  override name = 'ResumableEnd';
}

/** Whether a failure is a lost or refused gateway connection worth retrying (never a 4xx answer). */
export function retryable(err: unknown): boolean {
  if (err instanceof ResumableEnd || err instanceof OpenShellConnectionError) return true;
  if (err instanceof OpenShellApiError) return err.status === 502 || err.status === 503 || err.status === 504;
  return false;
}

/**
 * The retry schedule of one exec: exponential backoff with jitter
 * (100 ms → 2 s), reset by any progress, and a budget of `timeoutMs` of
 * continuous failure.
 */
export class RetryClock {
  readonly #timeoutMs: number;
  readonly #onRetry: ExecResumeOptions['onRetry'];
  #failingSince = 0;
  #attempt = 0;

  constructor(opts: ExecResumeOptions = {}) {
    this.#timeoutMs = opts.timeoutMs ?? DEFAULT_RESUME_TIMEOUT_MS;
    this.#onRetry = opts.onRetry;
  }

  /** Something arrived: the next failure starts a fresh budget. */
  progress(): void {
    this.#failingSince = 0;
    this.#attempt = 0;
  }

  /**
   * After a failure: waits the next backoff and returns, or throws `err` (or
   * a connection error naming the exec once the budget is spent).
   */
  async failed(err: unknown, baseUrl: string, execId: string | undefined, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) throw signal.reason ?? err;
    if (this.#timeoutMs <= 0 || !retryable(err)) throw err;
    const now = Date.now();
    if (this.#failingSince === 0) this.#failingSince = now;
    const spent = now - this.#failingSince;
    if (spent >= this.#timeoutMs) {
      const what = execId ? `exec ${execId}` : 'the exec';
      const code = err instanceof OpenShellConnectionError ? err.code : err instanceof OpenShellApiError ? err.code : 'ERESUME';
      throw new OpenShellConnectionError(
        baseUrl,
        code,
        `${detail(err)}; gave up re-attaching to ${what} after ${Math.round(spent / 1000)} s (it may still be running in the sandbox)`,
        { cause: err },
      );
    }
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** this.#attempt);
    const delayMs = Math.min(Math.round(base / 2 + Math.random() * (base / 2)), Math.max(1, this.#timeoutMs - spent));
    this.#attempt++;
    this.#onRetry?.({ attempt: this.#attempt, delayMs, error: err as Error, execId });
    await delay(delayMs, undefined, { signal });
  }
}

function detail(err: unknown): string {
  if (err instanceof OpenShellConnectionError) return err.message.replace(/^cannot reach the gateway at \S+: /, 'lost the gateway: ');
  return (err as Error)?.message ?? String(err);
}

/**
 * Per-stream byte positions already handed to the caller: a repeated chunk
 * (a replay after a re-attach) is cut to what is new.
 */
export class Offsets {
  readonly next: [number, number] = [0, 0];

  /** The part of a chunk at `offset` not delivered yet (null: nothing new). */
  take<T extends { length: number; subarray(a: number, b?: number): T }>(stream: 0 | 1, offset: number, data: T): { offset: number; data: T } | null {
    const next = this.next[stream];
    if (offset + data.length <= next) return null;
    if (offset < next) {
      data = data.subarray(next - offset);
      offset = next;
    }
    this.next[stream] = offset + data.length;
    return { offset, data };
  }

  get stdout(): number {
    return this.next[0];
  }

  get stderr(): number {
    return this.next[1];
  }
}

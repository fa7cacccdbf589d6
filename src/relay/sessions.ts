import { EventEmitter } from 'node:events';

/** What the registry needs of a connected supervisor session. */
export interface RegisteredSession {
  readonly sandboxId: string;
  readonly sessionId: string;
  /** Ends the session (idempotent), e.g. when a newer one supersedes it. */
  close(code: number, reason: string): void;
}

export interface SessionRegistryEvents<S extends RegisteredSession> {
  connected: [session: S];
  disconnected: [sandboxId: string, sessionId: string];
}

const BACKOFF_START_MS = 100;
const BACKOFF_MAX_MS = 2000;

/**
 * One current supervisor session per sandbox. A new session supersedes the
 * old one (which is closed); removal is remove-if-current, so a superseded
 * session's late cleanup never unregisters its successor.
 */
export class SessionRegistry<S extends RegisteredSession = RegisteredSession> {
  readonly #sessions = new Map<string, S>();
  readonly #events = new EventEmitter<SessionRegistryEvents<S>>();

  constructor() {
    // One waiter per in-flight exec may listen at once.
    this.#events.setMaxListeners(0);
  }

  get size(): number {
    return this.#sessions.size;
  }

  get(sandboxId: string): S | undefined {
    return this.#sessions.get(sandboxId);
  }

  /** Registers `session` as current; the session it supersedes (if any) is closed and returned. */
  register(session: S): S | undefined {
    const previous = this.#sessions.get(session.sandboxId);
    this.#sessions.set(session.sandboxId, session);
    if (previous && previous !== session) {
      previous.close(4409, 'superseded by a newer session');
    }
    this.#events.emit('connected', session);
    return previous;
  }

  /** Removes the registration only if `sessionId` is still the current one. */
  removeIfCurrent(sandboxId: string, sessionId: string): boolean {
    const current = this.#sessions.get(sandboxId);
    if (!current || current.sessionId !== sessionId) return false;
    this.#sessions.delete(sandboxId);
    this.#events.emit('disconnected', sandboxId, sessionId);
    return true;
  }

  on<E extends keyof SessionRegistryEvents<S>>(
    event: E,
    listener: (...args: SessionRegistryEvents<S>[E]) => void,
  ): () => void {
    this.#events.on(event, listener as never);
    return () => this.#events.off(event, listener as never);
  }

  /**
   * Resolves with the sandbox's session, waiting up to `timeoutMs` for one.
   * Checks with exponential backoff (100 ms → 2 s) and wakes at once when a
   * session registers. Resolves null on timeout or abort.
   */
  waitForSession(sandboxId: string, timeoutMs: number, signal?: AbortSignal): Promise<S | null> {
    const now = this.#sessions.get(sandboxId);
    if (now) return Promise.resolve(now);
    if (timeoutMs <= 0 || signal?.aborted) return Promise.resolve(null);
    return new Promise((resolve) => {
      const deadline = Date.now() + timeoutMs;
      let delay = BACKOFF_START_MS;
      let timer: NodeJS.Timeout | undefined;
      const finish = (session: S | null) => {
        clearTimeout(timer);
        off();
        signal?.removeEventListener('abort', onAbort);
        resolve(session);
      };
      const check = () => {
        const session = this.#sessions.get(sandboxId);
        if (session) return finish(session);
        const left = deadline - Date.now();
        if (left <= 0) return finish(null);
        timer = setTimeout(check, Math.min(delay, left));
        delay = Math.min(delay * 2, BACKOFF_MAX_MS);
      };
      const off = this.on('connected', (session) => {
        if (session.sandboxId === sandboxId) finish(session);
      });
      const onAbort = () => finish(null);
      signal?.addEventListener('abort', onAbort, { once: true });
      check();
    });
  }

  /** Closes every session (gateway shutdown). */
  closeAll(code: number, reason: string): void {
    for (const session of [...this.#sessions.values()]) session.close(code, reason);
  }
}

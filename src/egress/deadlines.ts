/** One pending deadline; `fire` runs at most once, some time after `at` (ms since the epoch). */
export interface Deadline {
  readonly at: number;
  readonly fire: () => void;
}

/**
 * Coarse deadlines for many short waits (upstream connects, a client's first
 * request head): one unref'd timer per tick while any is pending, instead of
 * a timer set and cleared per connection. A deadline fires up to one tick late.
 */
export class DeadlineSweep {
  readonly #tickMs: number;
  readonly #pending = new Set<Deadline>();
  #timer: NodeJS.Timeout | null = null;

  constructor(tickMs: number) {
    this.#tickMs = tickMs;
  }

  add(at: number, fire: () => void): Deadline {
    const d: Deadline = { at, fire };
    this.#pending.add(d);
    if (this.#timer === null) this.#schedule();
    return d;
  }

  delete(d: Deadline): void {
    this.#pending.delete(d);
  }

  close(): void {
    this.#pending.clear();
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #schedule(): void {
    this.#timer = setTimeout(this.#sweep, this.#tickMs);
    this.#timer.unref();
  }

  #sweep = (): void => {
    this.#timer = null;
    const now = Date.now();
    for (const d of this.#pending) {
      if (d.at > now) continue;
      this.#pending.delete(d);
      d.fire();
    }
    if (this.#pending.size > 0 && this.#timer === null) this.#schedule();
  };
}

import { LinkedSet, type Link } from './linked-set.js';

/** One pending deadline; `fire` runs at most once, some time after `at` (ms since the epoch). */
export interface DeadlineEntry {
  readonly at: number;
  readonly fire: () => void;
}

/** A pending deadline, as `add` returns it: the handle to `delete`. */
export type Deadline = Link<DeadlineEntry>;

/**
 * Coarse deadlines for many short waits (upstream connects, a client's first
 * request head): one unref'd timer per tick while any is pending, instead of
 * a timer set and cleared per connection. A deadline fires up to one tick late.
 * Pending deadlines are a LinkedSet, not a Set: see linked-set.ts.
 */
export class DeadlineSweep {
  readonly #tickMs: number;
  readonly #pending = new LinkedSet<DeadlineEntry>();
  #timer: NodeJS.Timeout | null = null;

  constructor(tickMs: number) {
    this.#tickMs = tickMs;
  }

  add(at: number, fire: () => void): Deadline {
    const d = this.#pending.add({ at, fire });
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
    this.#pending.forEach((d, link) => {
      if (d.at > now) return;
      this.#pending.delete(link);
      d.fire();
    });
    if (this.#pending.size > 0 && this.#timer === null) this.#schedule();
  };
}

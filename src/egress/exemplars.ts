/**
 * A few finished objects kept referenced for a while, so their hidden
 * classes outlive a full GC that lands while none is in use.
 *
 * V8 frees a hidden class (map) that no live object has, and throws away
 * every optimised function that was built on it. With one connection at a
 * time, a full GC between two connections did that to some 60 functions of
 * the connection path (Node's socket and stream code and ours): they ran
 * unoptimised and were compiled again over the next second or two, which is
 * the latency tail after every full GC. A few closed sockets, with what they
 * still reference, keep those maps alive.
 *
 * Slots are refilled once `refreshMs` has passed since they were last full,
 * so a kept object is promoted to old space once, not at every scavenge, and
 * a map that V8 has since replaced is not kept for long.
 */
export class Exemplars<T> {
  readonly #slots: (T | null)[];
  readonly #refreshMs: number;
  #next = 0;
  #fullAt = 0;

  constructor(size: number, refreshMs: number) {
    this.#slots = new Array<T | null>(size).fill(null);
    this.#refreshMs = refreshMs;
  }

  offer(v: T): void {
    if (this.#next >= this.#slots.length) {
      if (Date.now() - this.#fullAt < this.#refreshMs) return;
      this.#next = 0;
    }
    this.#slots[this.#next++] = v;
    if (this.#next === this.#slots.length) this.#fullAt = Date.now();
  }

  clear(): void {
    this.#slots.fill(null);
    this.#next = 0;
  }
}

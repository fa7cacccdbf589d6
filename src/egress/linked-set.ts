/**
 * An unordered set of values with O(1) add and delete through the link that
 * `add` returns: for per-connection bookkeeping in long-lived objects.
 *
 * Why not a `Set`: V8 keeps a Set's entries in a hash table that it replaces
 * (rehash) every few adds under churn, and the replaced table keeps its
 * entries and a pointer to its successor (for live iterators). Once one of
 * those tables has been promoted to old space, each later table, and every
 * socket in it, survives the scavenges as if alive until the next full GC:
 * about 500 bytes promoted per proxied connection, old space filling every
 * few seconds under load, and each full GC throwing away optimised code (the
 * latency tail). Links here are unlinked on delete, so nothing dead points
 * at anything young.
 */
export interface Link<T> {
  readonly value: T;
  /** @internal */ prev: Link<T> | null;
  /** @internal */ next: Link<T> | null;
  /** @internal */ linked: boolean;
}

export class LinkedSet<T> {
  #head: Link<T> | null = null;
  #size = 0;

  get size(): number {
    return this.#size;
  }

  add(value: T): Link<T> {
    const link: Link<T> = { value, prev: null, next: this.#head, linked: true };
    if (this.#head) this.#head.prev = link;
    this.#head = link;
    this.#size++;
    return link;
  }

  /** Remove `link`; a link already removed is ignored. */
  delete(link: Link<T>): void {
    if (!link.linked) return;
    link.linked = false;
    if (link.prev) link.prev.next = link.next;
    else this.#head = link.next;
    if (link.next) link.next.prev = link.prev;
    link.prev = link.next = null;
    this.#size--;
  }

  /** Call `f` for every value present now; `f` may delete any link (a deleted one is skipped). */
  forEach(f: (value: T, link: Link<T>) => void): void {
    const links: Link<T>[] = [];
    for (let l = this.#head; l; l = l.next) links.push(l);
    for (const l of links) if (l.linked) f(l.value, l);
  }

  clear(): void {
    this.forEach((_, l) => this.delete(l));
  }
}

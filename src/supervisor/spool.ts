import { open, rm, type FileHandle } from 'node:fs/promises';

export interface SpoolOptions {
  /** Called after each batch reaches the file (pendingBytes went down). */
  onFlush?: () => void;
  /** Called once when the file cannot be written; the bytes then stay in memory. */
  onError?: (err: Error) => void;
  /** Close the file descriptor after this long without appends. */
  idleCloseMs?: number;
  /**
   * Once the file cannot be written: bytes kept in memory, the newest; older
   * ones are dropped (default 16 MiB). Readers that must not lose bytes hold
   * the writer back (see `lagLimit`).
   */
  failedMemoryBytes?: number;
  /** The lowest offset a reader still needs: never dropped after a failure (default: none). */
  neededFrom?: () => number;
}

/** Default for `failedMemoryBytes`. */
export const FAILED_MEMORY_BYTES = 16 * 1024 * 1024;

const EMPTY = Buffer.alloc(0);
/** Largest single read a reader takes from the spool at once (the exec registry's replay chunk). */
export const REPLAY_CHUNK = 1024 * 1024;
const MAX_IOV = 1024;

/**
 * One output stream of one exec: an append-only byte log addressed by offset.
 *
 * `append` is synchronous and never copies: the live path hands the same
 * buffers to readers, while the file catches up asynchronously in batches
 * (writev). Bytes not yet on disk are served from memory, so `read` returns
 * exactly the bytes at any offset. The file is created on the first append and
 * its descriptor is closed when idle, so quiet execs hold no fd.
 *
 * When the file cannot be written (a full disk), the spool keeps serving from
 * memory but keeps only the newest `failedMemoryBytes`: a supervisor must not
 * run out of memory because its disk did. Bytes that reached the file before
 * the failure stay readable; the ones dropped after it make `read` throw.
 */
export class Spool {
  readonly path: string;
  #end = 0;
  /** Offset of the first byte in memory: everything before it is on disk, or dropped after a failure. */
  #flushed = 0;
  /** Bytes [0, fileEnd) are in the file. */
  #fileEnd = 0;
  /** Bytes [flushed, end), in order. */
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  #fh: FileHandle | null = null;
  #writing: Promise<void> | null = null;
  #sealed = false;
  #removed = false;
  #failed: Error | null = null;
  #idleTimer: NodeJS.Timeout | null = null;
  #opts: SpoolOptions;

  constructor(path: string, opts: SpoolOptions = {}) {
    this.path = path;
    this.#opts = opts;
  }

  /** Offset one past the last byte appended. */
  get end(): number {
    return this.#end;
  }

  /** Bytes appended but not yet written to the file. */
  get pendingBytes(): number {
    return this.#failed ? 0 : this.#pendingBytes;
  }

  /** Bytes held in memory (not yet written, or kept after a failure). */
  get memoryBytes(): number {
    return this.#pendingBytes;
  }

  /** The file could not be written: only the newest bytes are kept, in memory. */
  get failed(): boolean {
    return this.#failed !== null;
  }

  /**
   * How far behind `end` a reader may fall before it would lose bytes: the
   * memory kept after a failure, less one read's worth; unbounded otherwise.
   */
  get lagLimit(): number {
    return this.#failed ? Math.max(0, this.#memLimit - REPLAY_CHUNK) : Number.POSITIVE_INFINITY;
  }

  /** Appends bytes; returns their offset. */
  append(buf: Buffer): number {
    const offset = this.#end;
    if (buf.length === 0 || this.#removed) return offset;
    this.#pending.push(buf);
    this.#pendingBytes += buf.length;
    this.#end += buf.length;
    if (this.#failed) this.#trim();
    else if (!this.#writing) this.#writing = this.#pump();
    return offset;
  }

  /** Bytes at [from, from+max) that are still in memory, synchronously; null if on disk only. */
  readMemory(from: number, max: number): Buffer | null {
    if (from >= this.#end) return EMPTY;
    if (from < this.#flushed) return null;
    let pos = this.#flushed;
    for (const buf of this.#pending) {
      if (from < pos + buf.length) {
        const start = from - pos;
        return buf.subarray(start, Math.min(buf.length, start + max));
      }
      pos += buf.length;
    }
    return EMPTY;
  }

  /** Up to `max` bytes starting at `from` (fewer at the end; empty at or past `end`). */
  async read(from: number, max: number): Promise<Buffer> {
    const mem = this.readMemory(from, max);
    if (mem) return mem;
    if (from >= this.#fileEnd) {
      throw new Error(
        `bytes ${from}..${this.#flushed} were dropped: the spool file could not be written (${this.#failed?.message ?? 'error'})`,
      );
    }
    const len = Math.min(max, this.#fileEnd - from);
    const fh = await open(this.path, 'r');
    try {
      const buf = Buffer.allocUnsafe(len);
      let n = 0;
      while (n < len) {
        const { bytesRead } = await fh.read(buf, n, len - n, from + n);
        if (bytesRead === 0) break;
        n += bytesRead;
      }
      return n === len ? buf : buf.subarray(0, n);
    } finally {
      await fh.close();
    }
  }

  /** No more appends: close the descriptor once everything is written. */
  async seal(): Promise<void> {
    this.#sealed = true;
    await this.#writing;
    await this.#closeFile();
  }

  /** Deletes the file; reads fail afterwards. Idempotent. */
  async remove(): Promise<void> {
    this.#sealed = true;
    this.#removed = true;
    await this.#writing;
    await this.#closeFile();
    this.#pending = [];
    this.#pendingBytes = 0;
    await rm(this.path, { force: true });
  }

  async #pump(): Promise<void> {
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    this.#idleTimer = null;
    try {
      while (this.#pending.length > 0 && !this.#removed) {
        if (!this.#fh) this.#fh = await open(this.path, 'a', 0o600);
        const batch = this.#pending.slice(0, MAX_IOV);
        let total = 0;
        for (const b of batch) total += b.length;
        let written = (await this.#fh.writev(batch)).bytesWritten;
        while (written < total) {
          // A short write to a regular file is rare (disk full, signals); finish the rest.
          const rest = Buffer.concat(batch).subarray(written);
          written += (await this.#fh.write(rest)).bytesWritten;
        }
        this.#pending.splice(0, batch.length);
        this.#pendingBytes -= total;
        this.#flushed += total;
        this.#fileEnd = this.#flushed;
        this.#opts.onFlush?.();
      }
    } catch (err) {
      // Keep serving from memory, bounded: an exec must not hang, nor the
      // supervisor run out of memory, because its spool failed.
      this.#failed = err as Error;
      this.#trim();
      this.#opts.onError?.(err as Error);
      this.#opts.onFlush?.();
    } finally {
      this.#writing = null;
    }
    if (this.#sealed) await this.#closeFile();
    else if (this.#fh) {
      this.#idleTimer = setTimeout(() => {
        this.#idleTimer = null;
        if (!this.#writing) void this.#closeFile();
      }, this.#opts.idleCloseMs ?? 2000);
      this.#idleTimer.unref();
    }
  }

  get #memLimit(): number {
    return this.#opts.failedMemoryBytes ?? FAILED_MEMORY_BYTES;
  }

  /** After a failure: drop the oldest buffers beyond the memory limit that no reader still needs. */
  #trim(): void {
    const needed = this.#opts.neededFrom?.() ?? Number.POSITIVE_INFINITY;
    let drop = 0;
    let bytes = 0;
    while (drop < this.#pending.length - 1) {
      const len = this.#pending[drop]!.length;
      if (this.#pendingBytes - bytes - len < this.#memLimit || this.#flushed + bytes + len > needed) break;
      bytes += len;
      drop++;
    }
    if (drop === 0) return;
    this.#pending.splice(0, drop);
    this.#pendingBytes -= bytes;
    this.#flushed += bytes;
  }

  async #closeFile(): Promise<void> {
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    this.#idleTimer = null;
    const fh = this.#fh;
    this.#fh = null;
    if (fh) await fh.close().catch(() => {});
  }
}

/**
 * Writing a relayed chunk straight to a socket's handle.
 *
 * A spliced pair relays each chunk with one write. Through Node's Writable a
 * write costs, besides the system call: the Writable's bookkeeping, a fresh
 * WriteWrap, and a `process.nextTick` for the write callback, which makes
 * Node call back into JavaScript once more after every read callback. On a
 * WebSocket or a request/response tunnel, where each chunk is small and
 * crosses the proxy alone, that is a good part of the proxy's time per chunk.
 *
 * `send` hands the chunk to the handle itself when the socket's Writable
 * is idle (nothing buffered, not connecting, corked, ending or destroyed):
 * libuv writes it at once (`uv_try_write`), and only when the kernel did not
 * take all of it is the rest queued, in order after any earlier write, with
 * a completion callback. The handle's own byte count (`bytesWritten`) counts
 * these writes like any other.
 *
 * It needs `WriteWrap` and the stream state from Node's `stream_wrap`
 * binding (`process.binding`, allowed for this module in Node 20). Where
 * that is missing or looks different, or Node runs with
 * `--pending-deprecation` (where `process.binding` warns), or
 * OPENSHELL_EGRESS_RAW_WRITE=0 is set, `send` writes through the Writable.
 */
import type { Socket } from 'node:net';
import { getSystemErrorName } from 'node:util';

/** A `WriteWrap` request object: native, completion reported through `oncomplete`. */
interface WriteReq {
  oncomplete?: (status: number) => void;
  buffer?: Buffer | null;
}

interface StreamHandle {
  writeBuffer(req: WriteReq, data: Buffer): number;
}

interface StreamWrapBinding {
  WriteWrap: new () => WriteReq;
  streamBaseState: Int32Array;
  kLastWriteWasAsync: number;
}

function pendingDeprecation(): boolean {
  const opts = `${process.execArgv.join(' ')} ${process.env.NODE_OPTIONS ?? ''}`;
  return opts.includes('--pending-deprecation') || process.env.NODE_PENDING_DEPRECATION === '1';
}

function loadBinding(): StreamWrapBinding | null {
  if (process.env.OPENSHELL_EGRESS_RAW_WRITE === '0' || pendingDeprecation()) return null;
  const binding = (process as unknown as { binding?: (name: string) => unknown }).binding;
  if (typeof binding !== 'function') return null;
  try {
    const b = binding.call(process, 'stream_wrap') as Partial<StreamWrapBinding> | null;
    if (
      !b ||
      typeof b.WriteWrap !== 'function' ||
      !(b.streamBaseState instanceof Int32Array) ||
      typeof b.kLastWriteWasAsync !== 'number' ||
      b.kLastWriteWasAsync >= b.streamBaseState.length
    ) {
      return null;
    }
    return b as StreamWrapBinding;
  } catch {
    return null;
  }
}

/**
 * Looked up at the first write, not at import: a warm supervisor imports
 * this before it is given its sandbox's environment.
 */
let binding: StreamWrapBinding | null | undefined;

/** Whether `send` writes straight to handles in this process. */
export function rawWriteAvailable(): boolean {
  binding ??= loadBinding();
  return binding !== null;
}

/**
 * The request object for the next write. A write that completes at once
 * leaves it untouched (the native side wraps it only to queue a rest), so it
 * serves the next one; a queued write keeps it and a new one is made.
 */
let spareReq: WriteReq | null = null;

function writeError(status: number): NodeJS.ErrnoException {
  let code = 'EIO';
  try {
    code = getSystemErrorName(status);
  } catch {
    // not an errno: keep EIO
  }
  const err: NodeJS.ErrnoException = new Error(`write ${code}`);
  err.errno = status;
  err.code = code;
  err.syscall = 'write';
  return err;
}

/** `send` results. */
export const SENT = 0; // all written: the chunk is free again, write more at will
export const HELD = 1; // the socket holds on to the chunk; write more at will
export const FULL = 2; // the socket holds on to the chunk; wait for 'drain' before writing more
export type SendResult = typeof SENT | typeof HELD | typeof FULL;

/**
 * `dst.write(chunk)`, straight to the handle where it can. The same contract
 * as `write`'s false: after FULL, `dst` emits 'drain' once it takes more (a
 * queued rest of a direct write emits it too, once written; a failed one
 * destroys `dst` with the error). HELD and FULL also say the chunk must stay
 * untouched (a read buffer must not be reused for the next read).
 */
export function send(dst: Socket, chunk: Buffer): SendResult {
  binding ??= loadBinding();
  if (binding !== null && dst.writableLength === 0 && dst.writableCorked === 0 && !dst.writableEnded && !dst.destroyed && !dst.connecting) {
    const handle = (dst as unknown as { _handle: StreamHandle | null })._handle;
    if (handle) {
      const req = spareReq ?? new binding.WriteWrap();
      const err = handle.writeBuffer(req, chunk);
      if (err === 0) {
        if (binding.streamBaseState[binding.kLastWriteWasAsync] === 0) {
          spareReq = req;
          return SENT;
        }
        spareReq = null;
        req.buffer = chunk;
        req.oncomplete = (status: number): void => {
          req.buffer = null;
          if (dst.destroyed) return;
          if (status < 0) dst.destroy(writeError(status));
          else dst.emit('drain');
        };
        return FULL;
      }
      // Nothing was written; the Writable's own write below meets the error and reports it.
      spareReq = null;
    }
  }
  const ok = dst.write(chunk);
  return !ok ? FULL : dst.writableLength > 0 ? HELD : SENT;
}

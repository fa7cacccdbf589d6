import { WebSocket, type RawData } from 'ws';
import type { Logger } from '../log.js';
import { closeWebSocket } from '../relay/heartbeat.js';
import {
  encodeOutputv,
  STREAM_STDOUT,
  type OutputStream,
  type ExecAttachOp,
  type ExecErrorEv,
  type ExecEv,
  type ExecExitEv,
  type ExecQueryOp,
  type ExecStartOp,
} from '../protocol/exec.js';
import { ExecError, type ExecHandle, type ExecRegistry, type ExecSink, type ExecSubscription } from './exec-registry.js';

/**
 * Output is coalesced into frames: a frame goes out once this many bytes of
 * one stream are waiting, after COALESCE_MS (1 ms), or before any other frame or
 * event. A child writing in small pieces (coreutils write 8 KiB at a time)
 * then costs one frame per 64 KiB, not one per write.
 */
const FRAME_BYTES = 256 * 1024;
const COALESCE_MS = 1;
/** Stop reading the exec's output while more than this is queued on the socket. */
const HIGH_WATER = 4 * 1024 * 1024;
/** …and resume once the socket drained below this. */
const LOW_WATER = 1024 * 1024;

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/**
 * Serves one `exec` relay WebSocket against the registry: the first text frame
 * is `start` or `attach`; then binary frames are stdin and text frames are
 * `closeStdin`/`signal`/`resize`/`detach`. Output goes out as binary frames
 * (`encodeOutputv`, coalesced up to 64 KiB) followed by exactly one `exit` or `error`, then a 1000
 * close. Losing the socket only unsubscribes: the process keeps running.
 *
 * With `keep: true` on `start`/`attach` the relay stays open after the
 * terminal event: frames are dropped until the gateway's `release`, then the
 * relay serves the next `start`/`attach` (relay reuse; see protocol/exec.ts).
 *
 * A `start` for an execId that already exists (a retried start) attaches from
 * offset 0. `started` is sent after `attach` too, with the exec's pid.
 *
 * Call it as soon as the socket exists (before or in its `open` handler, not
 * after an await): frames that arrive with no listener are lost. `registry`
 * may be a promise; frames are queued until it resolves.
 *
 * Resolves when the socket is closed.
 */
export function serveExecRelay(
  ws: WebSocket,
  registryOrPromise: ExecRegistry | Promise<ExecRegistry>,
  log: Logger,
): Promise<void> {
  let registry: ExecRegistry | null = null;
  let queued: [RawData, boolean][] | null = null;
  const baseLog = log.child({ component: 'exec-relay' });
  let rlog = baseLog;
  let handle: ExecHandle | null = null;
  let sub: ExecSubscription | null = null;
  let gotFirst = false;
  let terminal = false;
  /** The current exec asked to keep the relay for another one. */
  let keep = false;
  /** A kept exec ended: dropping frames until `release`. */
  let releasing = false;
  /** This relay joined an exec started earlier (by requestId or execId): its stdin belongs to that start, so none is taken here. */
  let joined = false;

  const closed = new Promise<void>((resolve) => {
    if (ws.readyState === WebSocket.CLOSED) return resolve();
    ws.once('close', () => resolve());
  });

  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let pendingStream: OutputStream = STREAM_STDOUT;
  let pendingOffset = 0;
  let flushTimer: NodeJS.Timeout | null = null;

  const flush = (): void => {
    if (flushTimer) {
      clearTimeout(flushTimer);
      flushTimer = null;
    }
    if (pendingBytes === 0) return;
    const frame = encodeOutputv(pendingStream, pendingOffset, pending, pendingBytes);
    pending = [];
    pendingBytes = 0;
    if (ws.readyState !== WebSocket.OPEN) return;
    ws.send(frame, { binary: true }, onSent);
    if (ws.bufferedAmount > HIGH_WATER) sub?.pause();
  };
  const onFlushTimer = (): void => {
    flushTimer = null;
    if (!terminal) flush();
  };

  const sendJson = (ev: ExecEv): void => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(ev));
  };

  const finish = (ev: ExecExitEv | ExecErrorEv, reason = ''): void => {
    if (terminal) return;
    flush();
    terminal = true;
    sub?.close();
    sendJson(ev);
    if (keep && ws.readyState === WebSocket.OPEN) {
      releasing = true;
      return;
    }
    closeWebSocket(ws, 1000, reason);
  };

  /** `release` after a kept exec: the relay is ready for the next `start`/`attach`. */
  const onReleasing = (data: RawData, isBinary: boolean): void => {
    if (isBinary) return;
    const text = toBuffer(data).toString('utf8');
    if (!text.includes('"release"')) return;
    try {
      if ((JSON.parse(text) as { op?: unknown }).op !== 'release') return;
    } catch {
      return;
    }
    handle = null;
    sub = null;
    gotFirst = false;
    terminal = false;
    keep = false;
    releasing = false;
    joined = false;
    until = null;
    delivered[0] = delivered[1] = 0;
    rlog = baseLog;
  };

  const fail = (code: ExecErrorEv['code'], message: string): void => finish({ ev: 'error', code, message }, code);

  /** A one-shot answer (`list`, `info`, `signaled`, a detached `started`): then release or close. */
  const answer = (ev: ExecEv, reason = ''): void => {
    terminal = true;
    sendJson(ev);
    if (keep && ws.readyState === WebSocket.OPEN) {
      releasing = true;
      return;
    }
    closeWebSocket(ws, 1000, reason);
  };

  /** `attach` with `follow: false`: stop once these offsets were delivered (null: follow). */
  let until: [number, number] | null = null;
  const delivered: [number, number] = [0, 0];
  const caughtUp = (): boolean => until !== null && delivered[0] >= until[0] && delivered[1] >= until[1];

  const onSent = (): void => {
    if (sub && sub.paused && !terminal && ws.bufferedAmount <= LOW_WATER) sub.resume();
  };

  const sink: ExecSink = {
    output(stream, offset, data) {
      if (terminal || ws.readyState !== WebSocket.OPEN) return;
      if (until) {
        const i = stream === STREAM_STDOUT ? 0 : 1;
        if (offset >= until[i]) return;
        if (offset + data.length > until[i]) data = data.subarray(0, until[i] - offset);
        delivered[i] = offset + data.length;
      }
      if (pendingBytes > 0 && (stream !== pendingStream || offset !== pendingOffset + pendingBytes)) flush();
      if (pendingBytes === 0) {
        pendingStream = stream;
        pendingOffset = offset;
      }
      pending.push(data);
      pendingBytes += data.length;
      if (until && caughtUp()) {
        flush();
        sub?.close();
        answer({ ev: 'caughtUp', offsets: { stdout: until[0], stderr: until[1] } });
        return;
      }
      if (pendingBytes >= FRAME_BYTES) flush();
      else if (!flushTimer) flushTimer = setTimeout(onFlushTimer, COALESCE_MS);
    },
    exit(result) {
      finish({ ev: 'exit', ...result });
    },
    error(err) {
      fail(err.code, err.message);
    },
  };

  const begin = (op: ExecStartOp | ExecAttachOp): void => {
    let existing = false;
    if (op.op === 'start') {
      const found = registry!.get(op.execId);
      if (found) {
        handle = found;
        existing = true;
      } else {
        const joined = registry!.startOrJoin({
          ...op,
          env: op.env ?? {},
          tty: op.tty === true,
          timeoutSeconds: op.timeoutSeconds ?? 0,
        });
        handle = joined.handle;
        existing = joined.existing;
      }
    } else {
      if (typeof op.execId !== 'string') throw new ExecError('INVALID_ARGUMENT', 'execId: must be a string');
      handle = registry!.get(op.execId) ?? null;
      if (!handle) throw new ExecError('EXEC_NOT_FOUND', `exec "${op.execId}" not found`);
    }
    rlog = rlog.child({ execId: handle.execId });
    registry!.attached(handle);
    const from = op.op === 'attach' || existing ? op.offsets : undefined;
    const offsets = { stdout: Number(from?.stdout ?? 0), stderr: Number(from?.stderr ?? 0) };
    const started: ExecEv = { ev: 'started', execId: handle.execId, pid: handle.pid, ...(existing ? { existing: true } : {}) };
    joined = existing;
    if (op.op === 'start' && !existing && typeof op.stdin === 'string') {
      // Inline stdin makes the start atomic: a retry never finds a process with half its input.
      if (op.stdin.length > 0) handle.writeStdin(Buffer.from(op.stdin, 'base64'));
      handle.closeStdin();
    }
    if (op.op === 'start' && op.detach === true) {
      if (!existing) handle.closeStdin();
      answer(started, 'detached');
      return;
    }
    if (op.op === 'attach' && op.follow === false && handle.state === 'running') {
      const end = handle.offsets;
      until = [end.stdout, end.stderr];
      delivered[0] = offsets.stdout;
      delivered[1] = offsets.stderr;
    }
    // Subscribing checks the offsets (and delivers from a microtask): a bad attach is one error, no `started`.
    sub = handle.subscribe(offsets, sink);
    sendJson(started);
    if (caughtUp()) {
      sub.close();
      answer({ ev: 'caughtUp', offsets: { stdout: until![0], stderr: until![1] } });
      return;
    }
    if (ws.bufferedAmount > HIGH_WATER) sub.pause();
    if (op.op === 'start' && op.closeStdin === true && !existing) handle.closeStdin();
  };

  /** `list`, `info`, `signal` with an execId: one answer, no stream. */
  const query = (op: ExecQueryOp): void => {
    const reg = registry!;
    if (op.op === 'list') {
      answer({ ev: 'list', execs: reg.list().map((h) => reg.describe(h)) });
      return;
    }
    if (typeof op.execId !== 'string') throw new ExecError('INVALID_ARGUMENT', 'execId: must be a string');
    const h = reg.get(op.execId);
    if (!h) throw new ExecError('EXEC_NOT_FOUND', `exec "${op.execId}" not found`);
    if (op.op === 'info') answer({ ev: 'info', exec: reg.describe(h) });
    else answer({ ev: 'signaled', delivered: h.state === 'running' && h.signal(String(op.signal)) });
  };

  const onFirst = (data: RawData, isBinary: boolean): void => {
    let op: unknown;
    try {
      op = isBinary ? null : JSON.parse(toBuffer(data).toString('utf8'));
    } catch {
      op = null;
    }
    const kind = (op as { op?: unknown } | null)?.op;
    const isQuery = kind === 'list' || kind === 'info' || kind === 'signal';
    if (kind !== 'start' && kind !== 'attach' && !isQuery) {
      fail('INVALID_ARGUMENT', 'the first frame must be a JSON {"op":"start"|"attach"|"list"|"info"|"signal"}');
      return;
    }
    keep = (op as { keep?: unknown }).keep === true;
    try {
      if (isQuery) query(op as ExecQueryOp);
      else begin(op as ExecStartOp | ExecAttachOp);
    } catch (err) {
      if (err instanceof ExecError) fail(err.code, err.message);
      else {
        rlog.error({ err }, 'exec relay failed');
        fail('INTERNAL', (err as Error).message);
      }
    }
  };

  const onControl = (text: string): void => {
    let op: { op?: unknown; signal?: unknown; cols?: unknown; rows?: unknown };
    try {
      op = JSON.parse(text);
    } catch {
      rlog.warn({}, 'ignoring a text frame that is not JSON');
      return;
    }
    const h = handle!;
    switch (op?.op) {
      case 'closeStdin':
        if (!joined) h.closeStdin();
        sendJson({ ev: 'stdinClosed' });
        break;
      case 'signal':
        try {
          h.signal(String(op.signal));
        } catch (err) {
          rlog.warn({ err, signal: op.signal }, 'ignoring an invalid signal');
        }
        break;
      case 'resize':
        h.resize(Number(op.cols), Number(op.rows));
        break;
      case 'abandon':
        registry!.abandon(h, Number((op as { graceMs?: unknown }).graceMs) || 0);
        keep = false;
        terminal = true;
        sub?.close();
        ws.close(1000, 'abandoned');
        break;
      case 'detach':
        keep = false;
        terminal = true;
        sub?.close();
        ws.close(1000, 'detached');
        break;
      default:
        rlog.warn({ op: op?.op }, 'ignoring an unknown exec op');
    }
  };

  const onMessage = (data: RawData, isBinary: boolean): void => {
    if (!registry) {
      queued?.push([data, isBinary]);
      return;
    }
    if (releasing) {
      onReleasing(data, isBinary);
      return;
    }
    if (!gotFirst) {
      gotFirst = true;
      onFirst(data, isBinary);
      return;
    }
    if (terminal || !handle) return;
    if (isBinary) {
      if (joined) return;
      const h = handle;
      if (!h.writeStdin(toBuffer(data))) {
        // Backpressure to the gateway: stop reading the socket until the child takes more.
        ws.pause();
        h.onceStdinDrain(() => ws.resume());
      }
    } else {
      onControl(toBuffer(data).toString('utf8'));
    }
  };

  if (registryOrPromise instanceof Promise) {
    queued = [];
    registryOrPromise.then(
      (r) => {
        registry = r;
        const q = queued ?? [];
        queued = null;
        for (const [data, isBinary] of q) onMessage(data, isBinary);
      },
      (err: unknown) => {
        rlog.error({ err }, 'exec engine unavailable');
        gotFirst = true;
        fail('INTERNAL', 'exec engine unavailable');
      },
    );
  } else {
    registry = registryOrPromise;
  }
  ws.on('message', onMessage);
  ws.on('error', (err) => {
    rlog.debug({ err }, 'exec relay socket error');
  });
  ws.once('close', () => {
    // Never touches the process: a later attach resumes from offsets.
    if (flushTimer) clearTimeout(flushTimer);
    terminal = true;
    sub?.close();
  });
  return closed;
}

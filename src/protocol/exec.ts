/**
 * The exec relay protocol (relay target `exec`), spoken between the gateway
 * and the supervisor's exec registry over one WebSocket per exec.
 *
 * Gateway → supervisor: one JSON text frame `start` or `attach`, then binary
 * frames of stdin and text frames `closeStdin` / `signal` / `resize` / `detach`.
 * Supervisor → gateway: text `started`, binary output frames
 * (`[stream:1][offset:8 big-endian][bytes]`), and one terminal text `exit` or `error`.
 *
 * Relay reuse (an extension of DESIGN.md's one-relay-per-exec): a `start` or
 * `attach` with `keep: true` asks the supervisor to keep the relay open after
 * the terminal event instead of closing it. The gateway then sends `release`;
 * the supervisor drops every frame before it (stdin or ops still in flight for
 * the finished exec) and serves the next `start`/`attach` on the same relay.
 * A supervisor that does not know `keep` closes as before, so the gateway
 * only reuses relays that stayed open. `closeStdin: true` on `start` closes
 * stdin right after the spawn (one frame instead of two).
 */

export interface ExecStartOp {
  op: 'start';
  execId: string;
  /** argv; a single-string command has already been turned into `['sh','-c',cmd]`. */
  command: string[];
  env: Record<string, string>;
  workdir?: string;
  user?: string;
  tty: boolean;
  cols?: number;
  rows?: number;
  /** 0 = no timeout. On timeout: TERM to the process group, KILL after 2 s, exit 124. */
  timeoutSeconds: number;
  /** Keep the relay open after the terminal event, for `release` and another exec. */
  keep?: boolean;
  /** Close stdin at once (the exec gets no input). */
  closeStdin?: boolean;
  /**
   * Idempotent start: an exec started with this id in the last 24 h is
   * joined instead (`started` names its execId, `existing: true`) and no
   * second process is started. The supervisor owns the record.
   */
  requestId?: string;
  /** When joining an existing exec: deliver output from these offsets (default 0). */
  offsets?: { stdout: number; stderr: number };
  /**
   * Detached start: answer `started` and stream nothing; the relay then
   * closes (or, with `keep`, waits for `release`). `stdin` (base64) is
   * written and closed first.
   */
  detach?: boolean;
  /** Detached start only: bytes for stdin (base64), then EOF. */
  stdin?: string;
}
export interface ExecAttachOp {
  op: 'attach';
  execId: string;
  /** Byte offsets already delivered; output resumes from here. */
  offsets: { stdout: number; stderr: number };
  keep?: boolean;
  /**
   * false: replay up to the offsets the exec had reached when the attach
   * arrived, then answer `caughtUp` (or `exit` if it had finished) instead of
   * following live output. Default true.
   */
  follow?: boolean;
}
/**
 * One-shot queries and commands, as the first frame of an exec relay; the
 * answer is one text frame (`list`, `info`, `signaled`, or `error`), then the
 * relay closes (or, with `keep`, waits for `release`).
 */
export interface ExecListOp {
  op: 'list';
  keep?: boolean;
}
export interface ExecInfoOp {
  op: 'info';
  execId: string;
  keep?: boolean;
}
/** `signal` as a first frame names its exec; later on a streaming relay it does not. */
export interface ExecSignalExecOp {
  op: 'signal';
  execId: string;
  signal: string;
  keep?: boolean;
}
/**
 * The caller went away from an exec it may come back to (it named a
 * `requestId`): kill the process group unless a reader attaches within
 * `graceMs`. Closes the relay like `detach`.
 */
export interface ExecAbandonOp {
  op: 'abandon';
  graceMs: number;
}
/** After a kept exec's terminal event: the relay is free for the next `start`/`attach`. */
export interface ExecReleaseOp {
  op: 'release';
}
export interface ExecCloseStdinOp {
  op: 'closeStdin';
}
export interface ExecSignalOp {
  op: 'signal';
  /** Sent to the whole process group, e.g. `SIGTERM`, `SIGKILL`. */
  signal: string;
}
export interface ExecResizeOp {
  op: 'resize';
  cols: number;
  rows: number;
}
export type ExecOp =
  | ExecStartOp
  | ExecAttachOp
  | ExecListOp
  | ExecInfoOp
  | ExecSignalExecOp
  | ExecCloseStdinOp
  | ExecSignalOp
  | ExecResizeOp
  | ExecReleaseOp
  | ExecAbandonOp;
/** First frames that get one answer and no stream. */
export type ExecQueryOp = ExecListOp | ExecInfoOp | ExecSignalExecOp;

export interface ExecStartedEv {
  ev: 'started';
  execId: string;
  pid: number;
  /** The start joined an exec its `requestId` had already started. */
  existing?: boolean;
}
/** One exec as the registry describes it (answer to `list` and `info`). */
export interface ExecInfoWire {
  execId: string;
  requestId: string | null;
  pid: number;
  command: string[];
  tty: boolean;
  state: 'running' | 'exited';
  startedAt: string;
  exitedAt: string | null;
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  durationMs: number | null;
  stdoutBytes: number;
  stderrBytes: number;
}
export interface ExecListEv {
  ev: 'list';
  execs: ExecInfoWire[];
}
export interface ExecInfoEv {
  ev: 'info';
  exec: ExecInfoWire;
}
export interface ExecSignaledEv {
  ev: 'signaled';
  /** False when no process of the group was left to signal. */
  delivered: boolean;
}
/** `attach` with `follow: false` on a running exec: everything up to these offsets was sent. */
export interface ExecCaughtUpEv {
  ev: 'caughtUp';
  offsets: { stdout: number; stderr: number };
}
export interface ExecExitEv {
  ev: 'exit';
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  durationMs: number;
}
export type ExecErrorCode = 'EXEC_NOT_FOUND' | 'SPAWN_FAILED' | 'INVALID_ARGUMENT' | 'OUTPUT_EXPIRED' | 'CONFLICT' | 'INTERNAL';
export interface ExecErrorEv {
  ev: 'error';
  code: ExecErrorCode;
  message: string;
}
/**
 * The `closeStdin` op was handled: every stdin byte sent before it reached the
 * registry. A gateway may then resume the exec on a new relay, as nothing is
 * left to re-send. (An extension of DESIGN.md; gateways that do not know it
 * ignore it.)
 */
export interface ExecStdinClosedEv {
  ev: 'stdinClosed';
}
export type ExecEv =
  | ExecStartedEv
  | ExecExitEv
  | ExecErrorEv
  | ExecStdinClosedEv
  | ExecListEv
  | ExecInfoEv
  | ExecSignaledEv
  | ExecCaughtUpEv;

export const STREAM_STDOUT = 1;
export const STREAM_STDERR = 2;
export type OutputStream = typeof STREAM_STDOUT | typeof STREAM_STDERR;
const HEADER = 9;

/** Encodes one output chunk: stream byte, 8-byte big-endian offset, bytes. */
export function encodeOutput(stream: OutputStream, offset: number, data: Buffer): Buffer {
  return encodeOutputv(stream, offset, [data], data.length);
}

/** Encodes consecutive chunks of one stream (`total` bytes in all, starting at `offset`) as one output frame. */
export function encodeOutputv(stream: OutputStream, offset: number, chunks: readonly Buffer[], total: number): Buffer {
  const frame = Buffer.allocUnsafe(HEADER + total);
  frame[0] = stream;
  frame.writeBigUInt64BE(BigInt(offset), 1);
  let at = HEADER;
  for (const c of chunks) at += c.copy(frame, at);
  return frame;
}

export interface OutputChunk {
  stream: OutputStream;
  offset: number;
  data: Buffer;
}

/** Decodes an output frame; null when it is malformed. */
export function decodeOutput(frame: Buffer): OutputChunk | null {
  if (frame.length < HEADER) return null;
  const stream = frame[0];
  if (stream !== STREAM_STDOUT && stream !== STREAM_STDERR) return null;
  return { stream, offset: Number(frame.readBigUInt64BE(1)), data: frame.subarray(HEADER) };
}

/**
 * Gateway → supervisor: stop streaming this exec and close the relay (1000);
 * the process keeps running and can be attached to later. No terminal event.
 */
export interface ExecDetachOp {
  op: 'detach';
}
/** Every op that may follow the first frame on an exec relay. */
export type ExecControlOp = ExecCloseStdinOp | ExecSignalOp | ExecResizeOp | ExecDetachOp | ExecAbandonOp;

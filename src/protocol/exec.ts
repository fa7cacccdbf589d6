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
}
export interface ExecAttachOp {
  op: 'attach';
  execId: string;
  /** Byte offsets already delivered; output resumes from here. */
  offsets: { stdout: number; stderr: number };
  keep?: boolean;
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
export type ExecOp = ExecStartOp | ExecAttachOp | ExecCloseStdinOp | ExecSignalOp | ExecResizeOp | ExecReleaseOp;

export interface ExecStartedEv {
  ev: 'started';
  execId: string;
  pid: number;
}
export interface ExecExitEv {
  ev: 'exit';
  exitCode: number | null;
  signal: string | null;
  timedOut: boolean;
  durationMs: number;
}
export type ExecErrorCode = 'EXEC_NOT_FOUND' | 'SPAWN_FAILED' | 'INVALID_ARGUMENT' | 'OUTPUT_EXPIRED' | 'INTERNAL';
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
export type ExecEv = ExecStartedEv | ExecExitEv | ExecErrorEv | ExecStdinClosedEv;

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
export type ExecControlOp = ExecCloseStdinOp | ExecSignalOp | ExecResizeOp | ExecDetachOp;

import type { RawData, WebSocket } from 'ws';
import { decodeOutput, type ExecEv, type ExecOp, type ExecStartOp } from '../protocol/exec.js';
import type { ExecEvent } from '../schemas/sandbox.js';

/** An output chunk or a terminal event, as the gateway sees them on an exec relay. */
export type RunEvent =
  | { type: 'started'; execId: string; pid: number }
  | { type: 'stdout' | 'stderr'; data: Buffer; offset: number }
  | Extract<ExecEvent, { type: 'exit' }>
  | Extract<ExecEvent, { type: 'error' }>;

const QUEUE_HIGH = 64;
const QUEUE_LOW = 8;
const STDIN_CHUNK = 256 * 1024;

/**
 * The gateway's end of one exec relay: sends the `start` op and turns the
 * supervisor's frames into events. The iterator always ends with exactly one
 * `exit` or `error`: if the relay dies first (keepalive timeout, session
 * lost, RST), it ends with `RELAY_LOST` at once. A slow reader pauses the
 * relay socket, so backpressure reaches the process in the sandbox.
 */
export class ExecRun implements AsyncIterable<RunEvent> {
  readonly execId: string;
  readonly #ws: WebSocket;
  readonly #queue: RunEvent[] = [];
  #wake: (() => void) | undefined;
  #done = false;
  #paused = false;

  constructor(ws: WebSocket, start: ExecStartOp) {
    this.execId = start.execId;
    this.#ws = ws;
    ws.on('message', (data, isBinary) => this.#onFrame(data, isBinary));
    ws.once('close', (code, reason) => {
      this.#finish({
        type: 'error',
        code: 'RELAY_LOST',
        message: `relay to the sandbox was lost before the exec finished (${code}${reason.length ? ` ${reason.toString()}` : ''})`,
      });
    });
    this.#send(start);
  }

  /** True once a terminal event is queued. */
  get finished(): boolean {
    return this.#done;
  }

  writeStdin(data: Buffer): void {
    for (let i = 0; i < data.length; i += STDIN_CHUNK) {
      if (this.#ws.readyState === this.#ws.OPEN) this.#ws.send(data.subarray(i, i + STDIN_CHUNK), { binary: true });
    }
  }

  /** Resolves once the relay socket has flushed what was queued (stdin backpressure). */
  drained(): Promise<void> {
    if (this.#ws.bufferedAmount < 4 * STDIN_CHUNK || this.#ws.readyState !== this.#ws.OPEN) return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (this.#ws.bufferedAmount < STDIN_CHUNK || this.#ws.readyState !== this.#ws.OPEN) resolve();
        else setTimeout(check, 5).unref();
      };
      check();
    });
  }

  closeStdin(): void {
    this.#send({ op: 'closeStdin' });
  }

  signal(signal: string): void {
    this.#send({ op: 'signal', signal });
  }

  resize(cols: number, rows: number): void {
    this.#send({ op: 'resize', cols, rows });
  }

  /** The caller went away: kill the process group and drop the relay. */
  abort(): void {
    if (!this.#done) this.signal('SIGKILL');
    this.close();
  }

  close(): void {
    if (this.#ws.readyState === this.#ws.OPEN) this.#ws.close(1000, 'done');
    else this.#ws.terminate();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<RunEvent> {
    for (;;) {
      while (this.#queue.length > 0) {
        const event = this.#queue.shift() as RunEvent;
        if (this.#paused && this.#queue.length <= QUEUE_LOW) {
          this.#paused = false;
          this.#ws.resume();
        }
        yield event;
        if (event.type === 'exit' || event.type === 'error') {
          this.close();
          return;
        }
      }
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = undefined;
    }
  }

  #send(op: ExecOp): void {
    if (this.#ws.readyState === this.#ws.OPEN) this.#ws.send(JSON.stringify(op));
  }

  #onFrame(data: RawData, isBinary: boolean): void {
    if (this.#done) return;
    const buf = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
    if (isBinary) {
      const chunk = decodeOutput(buf);
      if (!chunk) return;
      this.#push({ type: chunk.stream === 1 ? 'stdout' : 'stderr', data: chunk.data, offset: chunk.offset });
      return;
    }
    let ev: ExecEv;
    try {
      ev = JSON.parse(buf.toString()) as ExecEv;
    } catch {
      return;
    }
    if (ev.ev === 'started') this.#push({ type: 'started', execId: ev.execId, pid: ev.pid });
    else if (ev.ev === 'exit') {
      this.#finish({
        type: 'exit',
        exitCode: ev.exitCode,
        signal: ev.signal,
        durationMs: ev.durationMs,
        ...(ev.timedOut ? { timedOut: true } : {}),
      });
    } else if (ev.ev === 'error') {
      this.#finish({ type: 'error', code: 'INTERNAL', message: `${ev.code}: ${ev.message}` });
    }
  }

  #finish(event: RunEvent): void {
    if (this.#done) return;
    this.#done = true;
    this.#push(event, true);
  }

  #push(event: RunEvent, force = false): void {
    if (this.#done && !force) return;
    this.#queue.push(event);
    if (!this.#paused && this.#queue.length >= QUEUE_HIGH) {
      this.#paused = true;
      this.#ws.pause();
    }
    this.#wake?.();
  }
}

import { setTimeout as delay } from 'node:timers/promises';
import type { RawData, WebSocket } from 'ws';
import { closeWebSocket } from './heartbeat.js';
import { decodeOutput, type ExecAttachOp, type ExecEv, type ExecOp, type ExecStartOp } from '../protocol/exec.js';
import type { ExecEvent } from '../schemas/sandbox.js';

/** An output chunk or a terminal event, as the gateway sees them on an exec relay. */
export type RunEvent =
  | { type: 'started'; execId: string; pid: number }
  | { type: 'stdout' | 'stderr'; data: Buffer; offset: number }
  | Extract<ExecEvent, { type: 'exit' }>
  | Extract<ExecEvent, { type: 'error' }>
  | Extract<ExecEvent, { type: 'running' }>;

/** The last event of a run: `exit`, `error`, or (an attach that does not follow) `running`. */
export function isTerminal(event: RunEvent): event is Extract<RunEvent, { type: 'exit' | 'error' | 'running' }> {
  return event.type === 'exit' || event.type === 'error' || event.type === 'running';
}

/**
 * Pause the relay socket while this much output waits for the reader (or
 * this many events), resume below the low marks. Byte marks keep memory per
 * exec bounded whatever the frame size, and leave enough queued that the
 * HTTP side never waits for the supervisor to refill after a resume.
 */
const QUEUE_HIGH_BYTES = 4 * 1024 * 1024;
const QUEUE_LOW_BYTES = 1024 * 1024;
const QUEUE_HIGH = 512;
const QUEUE_LOW = 128;
const STDIN_CHUNK = 256 * 1024;

export interface ExecRunOptions {
  /**
   * Relay reuse: the start op asks the supervisor to keep the relay, and when
   * the exec ends cleanly on a relay still open, `release` is sent and the
   * relay handed here (this run no longer touches it).
   */
  onRelease?: (ws: WebSocket) => void;
  /**
   * Transparent resume (DESIGN.md, Durable execs): when the relay dies before
   * the terminal event, get a new relay within `windowMs` and `attach` from
   * the offsets already delivered; only then is the run's end `RELAY_LOST`.
   * Not while stdin streamed on this run is unconfirmed (nothing is ever re-sent).
   */
  resume?: ResumeOptions;
  /**
   * The caller may come back (it named a requestId): when it goes away the
   * supervisor kills the process group only if nobody re-attaches within
   * this long, instead of at once.
   */
  abandonGraceMs?: number;
}

export interface ResumeOptions {
  windowMs: number;
  /** A fresh exec relay to the same sandbox; waits for its session; rejects when `signal` aborts. */
  reattach: (signal: AbortSignal) => Promise<WebSocket>;
  /** Called once per successful re-attach (metrics, logs). */
  onResumed?: (lostForMs: number) => void;
  /** False when no relay can come back (the gateway is shutting down): end with RELAY_LOST at once. */
  canResume?: () => boolean;
}

/** Pause between failed re-attach attempts inside the window. */
const REATTACH_RETRY_MS = 250;

/**
 * The gateway's end of one exec relay: sends the `start` op and turns the
 * supervisor's frames into events. The iterator always ends with exactly one
 * `exit` or `error`: if the relay dies first (keepalive timeout, session
 * lost, RST), it ends with `RELAY_LOST` at once. A slow reader pauses the
 * relay socket, so backpressure reaches the process in the sandbox.
 */
export class ExecRun implements AsyncIterable<RunEvent> {
  /** The exec's id; a start that joined an earlier exec by requestId learns the real one from `started`. */
  execId: string;
  #ws: WebSocket;
  readonly #start: ExecStartOp | ExecAttachOp;
  #abandonGraceMs: number;
  readonly #onRelease: ((ws: WebSocket) => void) | undefined;
  readonly #resume: ResumeOptions | undefined;
  /** The relay was handed back for another exec: never send or close on it again. */
  #released = false;
  readonly #onMessage = (data: RawData, isBinary: boolean): void => this.#onFrame(data, isBinary);
  readonly #onClose = (code: number, reason: Buffer): void => this.#relayLost(code, reason);
  /** `started` seen: the process exists, so a new relay attaches instead of starting again. */
  #started = false;
  /** The `started` event was given to the caller (once, whatever the relays). */
  #announced = false;
  /** Next byte offset expected per stream (stdout, stderr): what the caller has been given. */
  readonly #next: [number, number] = [0, 0];
  /** Stdin was streamed and the supervisor has not confirmed it all arrived (`stdinClosed`): a new relay could not replay it, so no resume. */
  #stdinPending = false;
  /** The caller went away; a resume only re-attaches to kill the process group. */
  #aborted = false;
  /** Set while waiting for a new relay: aborting it gives up the resume. */
  #resuming: AbortController | null = null;
  #consumed!: () => void;
  /** Resolves once the consumer has taken the terminal event (never, if the consumer went away first). */
  readonly consumed: Promise<void> = new Promise<void>((resolve) => (this.#consumed = resolve));
  #ended!: () => void;
  /** Resolves once the terminal event is queued. */
  readonly ended: Promise<void> = new Promise<void>((resolve) => (this.#ended = resolve));
  #queue: RunEvent[] = [];
  #head = 0;
  #queuedBytes = 0;
  #wake: (() => void) | undefined;
  #done = false;
  #paused = false;

  constructor(ws: WebSocket, start: ExecStartOp | ExecAttachOp, opts: ExecRunOptions = {}) {
    this.execId = start.execId;
    this.#ws = ws;
    this.#start = start;
    this.#abandonGraceMs = opts.abandonGraceMs ?? 0;
    if (start.op === 'attach') {
      this.#started = true;
      this.#next[0] = start.offsets.stdout;
      this.#next[1] = start.offsets.stderr;
    }
    this.#onRelease = opts.onRelease;
    this.#resume = opts.resume && opts.resume.windowMs > 0 ? opts.resume : undefined;
    ws.on('message', this.#onMessage);
    ws.once('close', this.#onClose);
    this.#send(this.#onRelease ? { ...start, keep: true } : start);
  }

  /** True once a terminal event is queued. */
  get finished(): boolean {
    return this.#done;
  }

  writeStdin(data: Buffer): void {
    if (data.length > 0) this.#stdinPending = true;
    for (let i = 0; i < data.length; i += STDIN_CHUNK) {
      if (!this.#released && this.#ws.readyState === this.#ws.OPEN) this.#ws.send(data.subarray(i, i + STDIN_CHUNK), { binary: true });
    }
  }

  /** True while the relay socket holds more unsent stdin than `drained()` lets pass. */
  get stdinBacklogged(): boolean {
    return !this.#released && this.#ws.readyState === this.#ws.OPEN && this.#ws.bufferedAmount >= 4 * STDIN_CHUNK;
  }

  /** Resolves once the relay socket has flushed what was queued (stdin backpressure). */
  drained(): Promise<void> {
    if (!this.stdinBacklogged) return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (this.#released || this.#ws.bufferedAmount < STDIN_CHUNK || this.#ws.readyState !== this.#ws.OPEN) resolve();
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

  /**
   * The caller went away: kill the process group and drop the relay. A run
   * with an abandon grace (its caller named a requestId) is killed only if
   * nobody re-attaches in time, unless `now` (the caller said it was done).
   */
  abort(now = false): void {
    this.#aborted = true;
    if (now) this.#abandonGraceMs = 0;
    // While re-attaching, the kill waits for the new relay (see #adopt); the run ends now.
    if (this.#resuming) {
      this.#finish({ type: 'error', code: 'RELAY_LOST', message: 'the caller went away while the relay was being re-established' });
      return;
    }
    if (!this.#done) this.#kill();
    this.close();
  }

  /** The caller left: kill the group now, or (requestId) unless it comes back within the grace. */
  #kill(ws: WebSocket = this.#ws): void {
    if (this.#released || ws.readyState !== ws.OPEN) return;
    const op: ExecOp = this.#abandonGraceMs > 0 ? { op: 'abandon', graceMs: this.#abandonGraceMs } : { op: 'signal', signal: 'SIGKILL' };
    ws.send(JSON.stringify(op));
  }

  close(): void {
    if (this.#resuming && !this.#aborted) this.#resuming.abort();
    if (this.#released) return;
    if (this.#ws.readyState === this.#ws.OPEN) closeWebSocket(this.#ws, 1000, 'done');
    else this.#ws.terminate();
  }

  /** The next queued event, or undefined when none is waiting (then see `onReady`). Closes the relay after the terminal event. */
  shift(): RunEvent | undefined {
    if (this.#head >= this.#queue.length) return undefined;
    const event = this.#queue[this.#head++] as RunEvent;
    if (this.#head === this.#queue.length) {
      this.#queue = [];
      this.#head = 0;
    } else if (this.#head >= 1024) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
    if (event.type === 'stdout' || event.type === 'stderr') this.#queuedBytes -= event.data.length;
    if (this.#paused && this.#queue.length - this.#head <= QUEUE_LOW && this.#queuedBytes <= QUEUE_LOW_BYTES) {
      this.#paused = false;
      this.#ws.resume();
    }
    if (isTerminal(event)) {
      this.close();
      this.#consumed();
    }
    return event;
  }

  /**
   * The gateway is shutting down: end the run now with `RELAY_LOST` and this
   * message (the process keeps running in the sandbox), so the caller gets a
   * terminal line instead of a cut connection.
   */
  shutdown(message: string, resumable = false): void {
    this.#resuming?.abort();
    this.#finish({ type: 'error', code: 'RELAY_LOST', message, ...(resumable ? { resumable: true as const } : {}) });
  }

  /** The first event, once there is one, left in the queue. */
  peek(): Promise<RunEvent> {
    return new Promise((resolve) => {
      const check = (): void => {
        if (this.queued > 0) resolve(this.#queue[this.#head] as RunEvent);
        else this.onReady(check);
      };
      check();
    });
  }

  /** Number of events waiting. */
  get queued(): number {
    return this.#queue.length - this.#head;
  }

  /** Calls `cb` once, when the next event is queued (at once if one is waiting). One waiter at a time. */
  onReady(cb: () => void): void {
    if (this.queued > 0) {
      queueMicrotask(cb);
      return;
    }
    this.#wake = cb;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<RunEvent> {
    for (;;) {
      let event: RunEvent | undefined;
      while ((event = this.shift()) !== undefined) {
        yield event;
        if (isTerminal(event)) return;
      }
      await new Promise<void>((resolve) => this.onReady(resolve));
    }
  }

  #send(op: ExecOp): void {
    if (!this.#released && this.#ws.readyState === this.#ws.OPEN) this.#ws.send(JSON.stringify(op));
  }

  /** The exec ended cleanly: free the relay for the next exec (see ExecRunOptions.onRelease). */
  #release(): void {
    const onRelease = this.#onRelease;
    if (!onRelease || this.#released || this.#ws.readyState !== this.#ws.OPEN) return;
    this.#send({ op: 'release' });
    this.#released = true;
    this.#ws.off('message', this.#onMessage);
    this.#ws.off('close', this.#onClose);
    if (this.#paused) {
      this.#paused = false;
      this.#ws.resume();
    }
    onRelease(this.#ws);
  }

  #onFrame(data: RawData, isBinary: boolean): void {
    if (this.#done) return;
    const buf = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
    if (isBinary) {
      const chunk = decodeOutput(buf);
      if (!chunk) return;
      const i = chunk.stream === 1 ? 0 : 1;
      let { data, offset } = chunk;
      const next = this.#next[i];
      // After a re-attach the supervisor may repeat bytes the caller already has.
      if (offset + data.length <= next) return;
      if (offset < next) {
        data = data.subarray(next - offset);
        offset = next;
      }
      this.#next[i] = offset + data.length;
      this.#push({ type: i === 0 ? 'stdout' : 'stderr', data, offset });
      return;
    }
    let ev: ExecEv;
    try {
      ev = JSON.parse(buf.toString()) as ExecEv;
    } catch {
      return;
    }
    if (ev.ev === 'stdinClosed') this.#stdinPending = false;
    else if (ev.ev === 'started') {
      if (!this.#announced) {
        this.#announced = true;
        this.execId = ev.execId;
        this.#push({ type: 'started', execId: ev.execId, pid: ev.pid });
      }
      this.#started = true;
    } else if (ev.ev === 'caughtUp') {
      this.#release();
      this.#finish({ type: 'running', stdoutOffset: ev.offsets.stdout, stderrOffset: ev.offsets.stderr });
    }
    else if (ev.ev === 'exit') {
      this.#release();
      this.#finish({
        type: 'exit',
        exitCode: ev.exitCode,
        signal: ev.signal,
        durationMs: ev.durationMs,
        ...(ev.timedOut ? { timedOut: true } : {}),
      });
    } else if (ev.ev === 'error') {
      this.#release();
      // An attach that finds no exec: the supervisor was replaced and the process is gone with it.
      const lost = this.#started && this.#start.op === 'start' && ev.code === 'EXEC_NOT_FOUND';
      this.#finish({ type: 'error', code: lost ? 'RELAY_LOST' : errorCodeOf(ev.code), message: `${ev.code}: ${ev.message}` });
    }
  }

  #relayLost(code: number, reason: Buffer): void {
    if (this.#done) return;
    const message = `relay to the sandbox was lost before the exec finished (${code}${reason.length ? ` ${reason.toString()}` : ''})`;
    const resume = this.#resume;
    if (!resume || this.#stdinPending || this.#aborted || resume.canResume?.() === false) {
      this.#finish({ type: 'error', code: 'RELAY_LOST', message });
      return;
    }
    void this.#reattach(resume, message);
  }

  /** Waits up to the resume window for a new relay, then attaches from the delivered offsets. */
  async #reattach(resume: ResumeOptions, lost: string): Promise<void> {
    this.#ws.off('message', this.#onMessage);
    const controller = new AbortController();
    this.#resuming = controller;
    const lostAt = performance.now();
    const timer = setTimeout(() => controller.abort(), resume.windowMs);
    timer.unref();
    try {
      while (!controller.signal.aborted) {
        let ws: WebSocket;
        try {
          ws = await resume.reattach(controller.signal);
        } catch {
          if (controller.signal.aborted) break;
          // Abortable: a resume given up (window over, shutdown) leaves no timer behind.
          await delay(REATTACH_RETRY_MS, undefined, { signal: controller.signal }).catch(() => undefined);
          continue;
        }
        if (controller.signal.aborted && !this.#aborted) {
          ws.terminate();
          break;
        }
        this.#adopt(ws);
        if (!this.#aborted) resume.onResumed?.(performance.now() - lostAt);
        return;
      }
    } finally {
      clearTimeout(timer);
      if (this.#resuming === controller) this.#resuming = null;
    }
    this.#finish({
      type: 'error',
      code: 'RELAY_LOST',
      message: `${lost}, and the sandbox was not reachable again within the ${resume.windowMs} ms resume window`,
    });
  }

  /** Continues on a new relay: `attach` from the offsets delivered (or the same `start` if it never began). */
  #adopt(ws: WebSocket): void {
    this.#ws = ws;
    const keep = this.#onRelease !== undefined;
    const first: ExecOp = this.#started
      ? { op: 'attach', execId: this.execId, offsets: { stdout: this.#next[0], stderr: this.#next[1] }, ...(keep ? { keep: true } : {}) }
      : { ...this.#start, ...(keep ? { keep: true } : {}) }; // a repeated start attaches from 0 if it did begin
    if (first.op === 'attach' && this.#start.op === 'attach' && this.#start.follow === false) first.follow = false;
    ws.send(JSON.stringify(first));
    if (this.#aborted) {
      // The caller left during the outage: finish what abort() began, kill the group.
      this.#kill(ws);
      closeWebSocket(ws, 1000, 'aborted');
      return;
    }
    ws.on('message', this.#onMessage);
    ws.once('close', this.#onClose);
    if (this.#paused) ws.pause();
  }

  #finish(event: RunEvent): void {
    if (this.#done) return;
    this.#done = true;
    this.#push(event, true);
    this.#ended();
  }

  #push(event: RunEvent, force = false): void {
    if (this.#done && !force) return;
    this.#queue.push(event);
    if (event.type === 'stdout' || event.type === 'stderr') this.#queuedBytes += event.data.length;
    if (!this.#paused && (this.#queuedBytes >= QUEUE_HIGH_BYTES || this.#queue.length - this.#head >= QUEUE_HIGH)) {
      this.#paused = true;
      this.#ws.pause();
    }
    const wake = this.#wake;
    if (wake) {
      this.#wake = undefined;
      wake();
    }
  }
}

/** Supervisor error codes that reach the caller as themselves; the rest are INTERNAL. */
function errorCodeOf(code: string): Extract<ExecEvent, { type: 'error' }>['code'] {
  return code === 'EXEC_NOT_FOUND' || code === 'OUTPUT_EXPIRED' || code === 'CONFLICT' || code === 'INVALID_ARGUMENT' ? code : 'INTERNAL';
}

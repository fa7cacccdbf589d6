import type { IncomingMessage } from 'node:http';
import type { RawData } from 'ws';
import type WebSocket from 'ws';
import { ExecChannel } from '../protocol/channels.js';
import type { BinaryExecEvent } from './client.js';
import { OpenShellApiError, OpenShellConnectionError } from './errors.js';

/** Output queued ahead of the reader above which the socket is paused (TCP backpressure), and where it resumes. */
const HIGH_WATER = 8 * 1024 * 1024;
const LOW_WATER = 2 * 1024 * 1024;

interface Opener {
  readonly baseUrl: string;
  openWebSocket(url: string): WebSocket;
}

/**
 * One connection of a binary exec (the WebSocket exec route, channel-byte
 * frames): output chunks with their stream offsets (counted from the offsets
 * the URL asked for), then one terminal event from the status frame. A
 * connection that ends without a status makes `next()` throw an
 * {@link OpenShellConnectionError}; a refused upgrade an {@link OpenShellApiError}.
 */
export class BinaryExecSocket {
  readonly #ws: WebSocket;
  readonly #baseUrl: string;
  readonly #queue: BinaryExecEvent[] = [];
  #head = 0;
  #bytes = 0;
  #paused = false;
  #failure: Error | null = null;
  #terminal = false;
  #wake: (() => void) | null = null;
  readonly #next: [number, number];
  readonly #signal: AbortSignal | undefined;
  readonly #onAbort = (): void => {
    this.#fail(this.#signal?.reason instanceof Error ? this.#signal.reason : new Error('aborted'));
    this.#ws.terminate();
  };

  constructor(client: Opener, url: string, signal: AbortSignal | undefined, offsets: [number, number] = [0, 0]) {
    this.#baseUrl = client.baseUrl;
    this.#next = [offsets[0], offsets[1]];
    this.#signal = signal;
    const ws = client.openWebSocket(url);
    this.#ws = ws;
    ws.binaryType = 'nodebuffer';
    ws.on('message', (data: RawData, isBinary: boolean) => this.#onFrame(data, isBinary));
    // No stdin: an empty stdin frame is end-of-input.
    ws.once('open', () => ws.send(Buffer.of(ExecChannel.stdin), { binary: true }));
    ws.on('unexpected-response', (_req: unknown, res: IncomingMessage) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('error', () => undefined);
      res.on('end', () => {
        this.#fail(OpenShellApiError.fromBody(res.statusCode ?? 0, res.statusMessage ?? '', Buffer.concat(chunks).toString('utf8')));
        ws.terminate();
      });
    });
    ws.on('error', (err: NodeJS.ErrnoException) => {
      this.#fail(new OpenShellConnectionError(this.#baseUrl, err.code ?? 'ECONNECT', err.code ?? err.message, { cause: err }));
    });
    ws.once('close', (code: number, reason: Buffer) => {
      this.#fail(
        new OpenShellConnectionError(
          this.#baseUrl,
          code === 1006 ? 'ECONNRESET' : `WS_${code}`,
          `the exec connection closed without an exit status (${code}${reason.length ? ` ${reason.toString()}` : ''})`,
        ),
      );
    });
    signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  /** The next event; throws once the connection failed and nothing is left. */
  async next(): Promise<BinaryExecEvent> {
    for (;;) {
      if (this.#head < this.#queue.length) {
        const ev = this.#queue[this.#head++]!;
        if (this.#head > 1024) {
          this.#queue.splice(0, this.#head);
          this.#head = 0;
        }
        if (ev.type === 'stdout' || ev.type === 'stderr') {
          this.#bytes -= ev.data.length;
          if (this.#paused && this.#bytes <= LOW_WATER) {
            this.#paused = false;
            this.#ws.resume();
          }
        }
        return ev;
      }
      if (this.#failure) throw this.#failure;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  /** Done with the exec: a clean close (the gateway then ends the exec at once, as for a caller that left). */
  close(): void {
    this.#signal?.removeEventListener('abort', this.#onAbort);
    const ws = this.#ws;
    if (ws.readyState === ws.OPEN) {
      ws.close(1000, 'done');
      setTimeout(() => ws.terminate(), 1000).unref();
    } else ws.terminate();
  }

  #push(ev: BinaryExecEvent): void {
    this.#queue.push(ev);
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  #fail(err: Error): void {
    if (this.#failure || this.#terminal) return;
    this.#failure = err;
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  #onFrame(data: RawData, isBinary: boolean): void {
    if (this.#terminal) return;
    const frame = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
    if (!isBinary || frame.length === 0) return;
    const channel = frame[0];
    if (channel === ExecChannel.stdout || channel === ExecChannel.stderr) {
      const i = channel === ExecChannel.stdout ? 0 : 1;
      const payload = frame.subarray(1);
      if (payload.length === 0) return;
      const offset = this.#next[i];
      this.#next[i] = offset + payload.length;
      this.#bytes += payload.length;
      this.#push({ type: i === 0 ? 'stdout' : 'stderr', data: payload, offset });
      if (!this.#paused && this.#bytes >= HIGH_WATER) {
        this.#paused = true;
        this.#ws.pause();
      }
      return;
    }
    if (channel !== ExecChannel.status) return;
    let s: Record<string, unknown>;
    try {
      s = JSON.parse(frame.subarray(1).toString('utf8')) as Record<string, unknown>;
    } catch {
      return;
    }
    this.#terminal = true;
    if ('exitCode' in s) {
      this.#push({
        type: 'exit',
        exitCode: typeof s.exitCode === 'number' ? s.exitCode : null,
        signal: typeof s.signal === 'string' ? s.signal : null,
        ...(s.timedOut === true ? { timedOut: true } : {}),
      });
    } else {
      this.#push({
        type: 'error',
        code: typeof s.reason === 'string' ? s.reason : 'INTERNAL',
        message: typeof s.message === 'string' ? s.message : 'exec failed',
        ...(s.resumable === true ? { resumable: true } : {}),
      });
    }
  }
}

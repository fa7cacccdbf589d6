import type { RawData, WebSocket } from 'ws';
import { isOpenShellError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ExecService } from './exec-service.js';
import { closeWebSocket, keepAlive } from './heartbeat.js';

import { ExecChannel as Channel } from '../protocol/channels.js';

export interface InteractiveOptions {
  name: string;
  command: string[];
  tty: boolean;
  workdir?: string;
  user?: string;
  env?: Record<string, string>;
  timeoutSeconds?: number;
  cols?: number;
  rows?: number;
  /** Idempotent start (and resume: a retry with the same id joins the exec). */
  requestId?: string;
  /** With `requestId`, when it joins an existing exec: output from these offsets. */
  offsets?: { stdout: number; stderr: number };
  /** Liveness on the caller's socket: pings, and termination after this much silence. */
  keepalive?: { intervalMs: number; timeoutMs: number };
  log: Logger;
}

/**
 * Interactive exec over a caller's WebSocket: frames carry a channel byte
 * (0 stdin, 1 stdout, 2 stderr, 3 status JSON, 4 resize JSON). The last
 * frame is a status on channel 3, then a 1000 close. The caller closing
 * early, or going silent past the keepalive timeout, kills the process group.
 * Both directions have backpressure: output waits for the caller's socket,
 * stdin for the relay.
 */
export async function serveInteractiveExec(client: WebSocket, execs: ExecService, opts: InteractiveOptions): Promise<void> {
  const abort = new AbortController();
  // A caller that closes cleanly is done with the exec (killed at once); a lost
  // connection (1006) may come back with its requestId (killed after a grace).
  let cleanClose = false;
  client.once('close', (code: number) => {
    cleanClose = code !== 1006;
    abort.abort();
  });
  if (opts.keepalive) keepAlive(client, opts.keepalive);
  // Until the exec runs, stop reading the caller: what it sends waits in the
  // kernel, not in gateway memory (only frames already parsed are held here).
  const pendingInput: RawData[] = [];
  const buffer = (data: RawData) => pendingInput.push(data);
  client.on('message', buffer);
  client.pause();
  let run;
  try {
    run = await execs.start(
      opts.name,
      {
        command: opts.command,
        tty: opts.tty,
        ...(opts.workdir ? { workdir: opts.workdir } : {}),
        ...(opts.user ? { user: opts.user } : {}),
        ...(opts.env ? { env: opts.env } : {}),
        ...(opts.timeoutSeconds ? { timeoutSeconds: opts.timeoutSeconds } : {}),
        ...(opts.requestId ? { requestId: opts.requestId } : {}),
      },
      { signal: abort.signal, interactiveStdin: true, cols: opts.cols, rows: opts.rows, offsets: opts.offsets },
    );
  } catch (err) {
    const code = isOpenShellError(err) ? err.code : 'INTERNAL';
    sendStatus(client, { status: 'Failure', reason: code, message: (err as Error).message });
    closeWebSocket(client, isOpenShellError(err) ? 4000 + (err.statusCode % 1000) : 4500, code);
    return;
  }
  const started = Date.now();
  // Stdin backpressure: stop reading the caller while the relay holds a
  // backlog of unsent stdin. (A paused socket's pongs wait unread, so
  // liveness pauses with it, as on relays: our slowness is not its death.)
  let inputPaused = false;
  const pauseForStdin = (): void => {
    if (inputPaused || !run.stdinBacklogged) return;
    inputPaused = true;
    client.pause();
    void run.drained().then(() => {
      inputPaused = false;
      // Also while closing: the caller's close frame must be read.
      if (client.readyState !== client.CLOSED) client.resume();
    });
  };
  const onInput = (data: RawData) => {
    const buf = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
    if (buf.length === 0) return;
    const channel = buf[0];
    const payload = buf.subarray(1);
    if (channel === Channel.stdin) {
      // An empty stdin frame is end-of-input (as `kubectl exec` without -i sends).
      if (payload.length === 0) run.closeStdin();
      else {
        run.writeStdin(payload);
        pauseForStdin();
      }
    } else if (channel === Channel.resize) {
      try {
        const size = JSON.parse(payload.toString()) as { Width?: number; Height?: number; cols?: number; rows?: number };
        const cols = size.cols ?? size.Width;
        const rows = size.rows ?? size.Height;
        if (typeof cols === 'number' && typeof rows === 'number' && cols > 0 && rows > 0) run.resize(cols, rows);
      } catch {
        opts.log.debug({}, 'ignored a malformed resize frame');
      }
    }
  };
  client.off('message', buffer);
  for (const data of pendingInput.splice(0)) onInput(data);
  client.on('message', onInput);
  if (!inputPaused && client.readyState !== client.CLOSED) client.resume();
  abort.signal.addEventListener('abort', () => {
    if (!run.finished) run.abort(cleanClose);
  });

  let outcome = 'aborted';
  for await (const event of run) {
    if (event.type === 'stdout' || event.type === 'stderr') {
      if (client.readyState !== client.OPEN) continue;
      const frame = channelFrame(event.type === 'stdout' ? Channel.stdout : Channel.stderr, event.data);
      // Backpressure: past the high-water mark, wait until the caller's socket
      // took this frame; meanwhile the run's queue fills and pauses the relay,
      // which reaches the process. A caller that stops reading stops the exec.
      if (client.bufferedAmount + frame.length > SEND_HIGH_WATER) await sendFlushed(client, frame);
      else client.send(frame, { binary: true });
    } else if (event.type === 'exit') {
      outcome = 'exit';
      sendStatus(client, {
        status: event.exitCode === 0 ? 'Success' : 'Failure',
        ...(event.exitCode === 0 ? {} : { reason: 'NonZeroExitCode' }),
        exitCode: event.exitCode,
        signal: event.signal,
        ...(event.timedOut ? { timedOut: true } : {}),
        details: { causes: [{ reason: 'ExitCode', message: String(event.exitCode ?? '') }] },
      });
      closeWebSocket(client, 1000, 'exit');
    } else if (event.type === 'error') {
      outcome = 'error';
      sendStatus(client, { status: 'Failure', reason: event.code, message: event.message, ...(event.resumable ? { resumable: true } : {}) });
      closeWebSocket(client, 4502, event.code);
    }
  }
  execs.finished(Date.now() - started, outcome);
}

/**
 * `[channel][data]` for the caller. Output data is a view into the relay's
 * frame (`[stream][offset:8][bytes]`), whose byte before it is spent (the
 * offset's last one, or output already delivered): the channel byte is
 * written there and the frame is a view too, with no copy of the bulk.
 */
function channelFrame(channel: number, data: Buffer): Buffer {
  if (data.byteOffset >= 1 && data.buffer.byteLength >= data.byteOffset + data.length) {
    const frame = Buffer.from(data.buffer, data.byteOffset - 1, data.length + 1);
    frame[0] = channel;
    return frame;
  }
  const frame = Buffer.allocUnsafe(data.length + 1);
  frame[0] = channel;
  data.copy(frame, 1);
  return frame;
}

/** Bytes the gateway buffers for a caller's WebSocket before it stops taking output from the relay. */
const SEND_HIGH_WATER = 4 * 1024 * 1024;

/** Sends a frame and resolves once it reached the socket, or the socket closed. */
function sendFlushed(client: WebSocket, frame: Buffer): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = (): void => {
      client.off('close', done);
      resolve();
    };
    client.once('close', done);
    client.send(frame, { binary: true }, done);
  });
}

function sendStatus(client: WebSocket, status: Record<string, unknown>): void {
  if (client.readyState !== client.OPEN) return;
  client.send(Buffer.concat([Buffer.from([Channel.status]), Buffer.from(JSON.stringify({ metadata: {}, ...status }))]), {
    binary: true,
  });
}

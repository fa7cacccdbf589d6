import { Readable } from 'node:stream';
import type { LogLine } from '../protocol/control.js';
import WebSocket from 'ws';
import type {
  CreateSandboxBody,
  ExecBody,
  ExecEvent,
  ExecInfo,
  ExecResult,
  Sandbox,
  SandboxList,
} from '../schemas/sandbox.js';
import { connectionError, OpenShellApiError, OpenShellConnectionError, SandboxWaitError } from './errors.js';
import { parseNdjson } from './ndjson.js';
import { keepAlive } from '../relay/heartbeat.js';
import { BinaryExecSocket } from './exec-socket.js';
import { newRequestId, Offsets, ResumableEnd, RetryClock, type ExecResumeOptions } from './resume.js';

export interface OpenShellClientOptions {
  /** The gateway, e.g. `http://127.0.0.1:8080`. */
  baseUrl: string;
  /** Sent as `Authorization: Bearer <token>` on every call. */
  token?: string;
  /** A `fetch` to use instead of the global one (tests, instrumentation). */
  fetch?: typeof fetch;
  /**
   * An exec stream that delivers nothing (not even the `keepalive` line the
   * gateway sends after 15 s of silence) for this long is presumed dead: the
   * iteration throws an {@link OpenShellConnectionError} with code
   * `ESTREAMIDLE` instead of waiting forever on a connection a NAT dropped.
   * WebSockets from `openWebSocket` ping and are terminated after this long
   * without a pong or data. Default 45 000 (three missed keepalives); 0
   * turns both off.
   */
  streamIdleTimeoutMs?: number;
}

/** Three keepalive periods of the gateway's exec stream (DESIGN.md: one after 15 s of silence). */
export const DEFAULT_STREAM_IDLE_TIMEOUT_MS = 45_000;

export interface SignalOption {
  signal?: AbortSignal;
}

export interface WaitForReadyOptions extends SignalOption {
  /** Default 60 000. */
  timeoutMs?: number;
  /** Called with every snapshot the watch delivers, the first one included. */
  onUpdate?: (sandbox: Sandbox) => void;
}

export interface ExecWebSocketOptions {
  /** argv (each element becomes one repeated `command` query parameter), or one string run with `sh -c`. */
  command: string[] | string;
  tty?: boolean;
  workdir?: string;
  user?: string;
  /** Sent as repeated `env=KEY=VALUE` parameters. */
  env?: Record<string, string>;
  timeoutSeconds?: number;
  cols?: number;
  rows?: number;
  /** Idempotent start; with the offsets, a reconnect joins the exec and continues from there. */
  requestId?: string;
  stdoutOffset?: number;
  stderrOffset?: number;
}

/** Options of the exec calls that resume. */
export interface ExecCallOptions extends SignalOption {
  resume?: ExecResumeOptions;
}

/** Events of {@link OpenShellClient.execBinary}: raw output bytes, then one terminal event. */
export type BinaryExecEvent =
  | { type: 'stdout' | 'stderr'; data: Buffer; offset: number }
  | { type: 'exit'; exitCode: number | null; signal: string | null; timedOut?: boolean }
  | { type: 'error'; code: string; message: string; resumable?: boolean };

export interface PolicyState {
  version: number;
  policy: unknown;
}

export interface PolicyUpdate extends PolicyState {
  /** True when the sandbox's supervisor acknowledged the new policy; otherwise it applies on reconnect. */
  applied: boolean;
}

/** One supervisor or egress-decision log line. */
export type { LogLine };

type Query = Record<string, string | number | boolean | ReadonlyArray<string> | undefined>;

interface RequestOptions extends SignalOption {
  query?: Query;
  json?: unknown;
  body?: RequestInit['body'];
  headers?: Record<string, string>;
}

export { ExecChannel } from '../protocol/channels.js';

/**
 * A typed client of the openshell gateway's REST API. Every method throws
 * {@link OpenShellApiError} for an error answer and
 * {@link OpenShellConnectionError} when the gateway cannot be reached.
 */
export class OpenShellClient {
  readonly baseUrl: string;
  readonly #token: string | undefined;
  readonly #fetch: typeof fetch;
  readonly #idleMs: number;

  constructor(opts: OpenShellClientOptions) {
    let url: URL;
    try {
      url = new URL(opts.baseUrl);
    } catch {
      throw new TypeError(`invalid gateway URL "${opts.baseUrl}"`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new TypeError(`invalid gateway URL "${opts.baseUrl}": expected http:// or https://`);
    }
    this.baseUrl = url.href.replace(/\/+$/, '');
    this.#token = opts.token || undefined;
    this.#fetch = opts.fetch ?? globalThis.fetch;
    const idle = opts.streamIdleTimeoutMs ?? DEFAULT_STREAM_IDLE_TIMEOUT_MS;
    if (!(idle >= 0)) throw new TypeError(`streamIdleTimeoutMs must be >= 0, got ${String(idle)}`);
    this.#idleMs = idle;
  }

  // --- sandboxes ---------------------------------------------------------

  /** `POST /v1/sandboxes` → the new sandbox (usually `Provisioning`). */
  async createSandbox(body: CreateSandboxBody, opts: SignalOption = {}): Promise<Sandbox> {
    return this.#json<Sandbox>('POST', '/v1/sandboxes', { json: body, signal: opts.signal });
  }

  /** `GET /v1/sandboxes`, optionally filtered by labels (all must match). */
  async listSandboxes(opts: { labels?: Record<string, string> } & SignalOption = {}): Promise<SandboxList> {
    const label = Object.entries(opts.labels ?? {}).map(([k, v]) => `${k}=${v}`);
    return this.#json<SandboxList>('GET', '/v1/sandboxes', { query: { label }, signal: opts.signal });
  }

  async getSandbox(name: string, opts: SignalOption = {}): Promise<Sandbox> {
    return this.#json<Sandbox>('GET', sandboxPath(name), { signal: opts.signal });
  }

  /** Starts the delete; the answer is the sandbox in phase `Deleting`. */
  async deleteSandbox(name: string, opts: SignalOption = {}): Promise<Sandbox> {
    return this.#json<Sandbox>('DELETE', sandboxPath(name), { signal: opts.signal });
  }

  /**
   * `GET …/watch`: the sandbox now and on every change. The iteration ends
   * when the sandbox is gone; breaking out of it closes the stream.
   */
  async *watchSandbox(name: string, opts: SignalOption = {}): AsyncGenerator<Sandbox> {
    const res = await this.#request('GET', `${sandboxPath(name)}/watch`, {
      signal: opts.signal,
      headers: { accept: 'application/x-ndjson' },
    });
    yield* parseNdjson<Sandbox>(this.#chunks(res, opts.signal));
  }

  /**
   * Resolves with the sandbox once it is `Ready`. Rejects with a
   * {@link SandboxWaitError} naming the phase, reason and message when it
   * reaches `Error` or `Deleting`, disappears, or `timeoutMs` passes.
   */
  async waitForReady(name: string, opts: WaitForReadyOptions = {}): Promise<Sandbox> {
    const timeoutMs = opts.timeoutMs ?? 60_000;
    opts.signal?.throwIfAborted();
    const abort = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      abort.abort(new Error('timeout'));
    }, timeoutMs);
    const onAbort = () => abort.abort(opts.signal?.reason);
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    let last: Sandbox | undefined;
    try {
      for await (const sandbox of this.watchSandbox(name, { signal: abort.signal })) {
        last = sandbox;
        opts.onUpdate?.(sandbox);
        if (sandbox.phase === 'Ready') return sandbox;
        if (sandbox.phase === 'Error' || sandbox.phase === 'Deleting') {
          throw new SandboxWaitError(
            `sandbox "${name}" reached phase ${sandbox.phase}${describeCondition(sandbox)}`,
            sandbox.phase,
            sandbox.conditions[0]?.reason,
          );
        }
      }
      throw new SandboxWaitError(`sandbox "${name}" was deleted before it became Ready`, last?.phase, last?.conditions[0]?.reason);
    } catch (err) {
      if (timedOut) {
        throw new SandboxWaitError(
          `sandbox "${name}" not Ready after ${formatSeconds(timeoutMs)}` +
            (last ? ` (phase ${last.phase}${describeCondition(last)})` : ''),
          last?.phase,
          last?.conditions[0]?.reason,
        );
      }
      if (opts.signal?.aborted) throw opts.signal.reason;
      throw err;
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
    }
  }

  // --- exec ----------------------------------------------------------------

  /**
   * `POST …/exec` streaming: yields `started`, `stdout`/`stderr` (base64
   * `data`), `keepalive`, and exactly one final `exit` or `error`. Aborting
   * `signal` disconnects, which kills a non-detached exec (after the resume
   * grace, as it carries a requestId).
   *
   * Resume: a `requestId` is sent (one is made when the body has none). When
   * the connection to the gateway drops mid-stream (a gateway restart, a
   * load balancer reset), the call retries with backoff and re-attaches:
   * by execId from the offsets already yielded, or (no `started` seen yet)
   * by posting the same requestId again, which never starts a second
   * process. Every byte is yielded once; the iteration ends with the real
   * `exit`. After `resume.timeoutMs` without reaching the gateway it throws
   * an {@link OpenShellConnectionError}.
   */
  async *exec(name: string, body: ExecBody, opts: ExecCallOptions = {}): AsyncGenerator<ExecEvent> {
    const requestBody: ExecBody = { ...body, requestId: body.requestId ?? newRequestId() };
    yield* this.#resumable(name, { body: requestBody }, opts);
  }

  /**
   * Replays an exec's output from the given offsets and (default) follows it
   * to its `exit`, with the same resume as {@link exec}. `started` comes
   * first. Without `follow` the last event of a running exec is `running`
   * with the offsets reached.
   */
  async *attach(
    name: string,
    execId: string,
    opts: { stdoutOffset?: number; stderrOffset?: number; follow?: boolean } & ExecCallOptions = {},
  ): AsyncGenerator<ExecEvent> {
    yield* this.#resumable(name, { execId, offsets: [opts.stdoutOffset ?? 0, opts.stderrOffset ?? 0], follow: opts.follow ?? true }, opts);
  }

  async *#resumable(
    name: string,
    target: { body?: ExecBody; execId?: string; offsets?: [number, number]; follow?: boolean },
    opts: ExecCallOptions,
  ): AsyncGenerator<ExecEvent> {
    const clock = new RetryClock(opts.resume);
    const seen = new Offsets();
    if (target.offsets) [seen.next[0], seen.next[1]] = target.offsets;
    let execId = target.execId;
    let announced = false;
    let ended = false;
    const follow = target.follow ?? true;
    try {
      for (;;) {
        try {
          const res = execId
            ? await this.#request('GET', `${execPath(name, execId)}/output`, {
                query: { stdoutOffset: seen.stdout, stderrOffset: seen.stderr, follow: follow ? 'true' : 'false' },
                signal: opts.signal,
                headers: { accept: 'application/x-ndjson' },
              })
            : await this.#request('POST', `${sandboxPath(name)}/exec`, {
                json: target.body,
                signal: opts.signal,
                headers: { accept: 'application/x-ndjson' },
              });
          for await (const ev of parseNdjson<ExecEvent>(this.#chunks(res, opts.signal, this.#idleMs))) {
            clock.progress();
            switch (ev.type) {
              case 'started':
                execId = ev.execId;
                if (!announced) {
                  announced = true;
                  yield ev;
                }
                break;
              case 'stdout':
              case 'stderr': {
                const raw = Buffer.from(ev.data, 'base64');
                const fresh = seen.take(ev.type === 'stdout' ? 0 : 1, ev.offset, raw);
                if (!fresh) break;
                yield fresh.data.length === raw.length ? ev : { type: ev.type, offset: fresh.offset, data: fresh.data.toString('base64') };
                break;
              }
              case 'error':
                if (ev.resumable && execId) throw new ResumableEnd(ev.message);
                ended = true;
                yield ev;
                return;
              case 'exit':
              case 'running':
                ended = true;
                yield ev;
                return;
              default:
                yield ev;
            }
          }
          throw new OpenShellConnectionError(this.baseUrl, 'ESTREAMEND', 'the exec stream ended without an exit status');
        } catch (err) {
          try {
            await clock.failed(err, this.baseUrl, execId, opts.signal);
          } catch (final) {
            if (!opts.signal?.aborted) ended = true; // gave up: the gateway is out of reach, nothing to tell it
            throw final;
          }
        }
      }
    } finally {
      // The caller stopped early (broke out, aborted, its output closed): the exec it
      // started ends now, as DESIGN.md says, not after the gateway's resume grace.
      if (!ended && target.body && execId) {
        await this.execSignal(name, execId, 'SIGKILL', { signal: AbortSignal.timeout(2000) }).catch(() => undefined);
      }
    }
  }

  /**
   * A non-tty exec over the WebSocket route (binary channel frames, no
   * base64): the bulk transport. Yields `stdout`/`stderr` with raw `data`
   * and their stream offsets, then one `exit` or `error`. Stdin is closed at
   * once. Resumes like {@link exec}: a lost connection reconnects with the
   * same requestId and the offsets already yielded.
   */
  async *execBinary(name: string, opts: ExecWebSocketOptions, call: ExecCallOptions = {}): AsyncGenerator<BinaryExecEvent> {
    const requestId = opts.requestId ?? newRequestId();
    const clock = new RetryClock(call.resume);
    const seen = new Offsets();
    for (;;) {
      const url = this.execUrl(name, { ...opts, tty: false, requestId, stdoutOffset: seen.stdout, stderrOffset: seen.stderr });
      const socket = new BinaryExecSocket(this, url, call.signal, [seen.stdout, seen.stderr]);
      try {
        for (;;) {
          const ev = await socket.next();
          if (ev.type === 'stdout' || ev.type === 'stderr') {
            clock.progress();
            const fresh = seen.take(ev.type === 'stdout' ? 0 : 1, ev.offset, ev.data);
            if (fresh) yield { type: ev.type, data: fresh.data, offset: fresh.offset };
            continue;
          }
          if (ev.type === 'error' && ev.resumable) throw new ResumableEnd(ev.message);
          yield ev;
          return;
        }
      } catch (err) {
        socket.close();
        await clock.failed(err, this.baseUrl, undefined, call.signal);
      } finally {
        socket.close();
      }
    }
  }

  /** `POST …/exec` with `Accept: application/json`: waits for the end, output decoded as UTF-8. */
  async execBuffered(name: string, body: ExecBody, opts: SignalOption = {}): Promise<ExecResult> {
    return this.#json<ExecResult>('POST', `${sandboxPath(name)}/exec`, {
      json: body,
      signal: opts.signal,
      headers: { accept: 'application/json' },
    });
  }

  /** `POST …/exec` with `detach: true`: answers at once (202) with the exec's id. */
  async execDetached(name: string, body: ExecBody, opts: SignalOption = {}): Promise<{ execId: string }> {
    return this.#json<{ execId: string }>('POST', `${sandboxPath(name)}/exec`, {
      json: { ...body, requestId: body.requestId ?? newRequestId(), detach: true },
      signal: opts.signal,
      headers: { accept: 'application/json' },
    });
  }

  /** `GET …/execs`: the sandbox's running execs and those finished within the retention (1 h). */
  async execsList(name: string, opts: SignalOption = {}): Promise<{ execs: ExecInfo[] }> {
    return this.#json<{ execs: ExecInfo[] }>('GET', `${sandboxPath(name)}/execs`, { signal: opts.signal });
  }

  async execGet(name: string, execId: string, opts: SignalOption = {}): Promise<ExecInfo> {
    return this.#json<ExecInfo>('GET', execPath(name, execId), { signal: opts.signal });
  }

  /** One `GET …/execs/:execId/output` from the given offsets (no resume; see {@link attach}). */
  async *execOutput(
    name: string,
    execId: string,
    opts: { stdoutOffset?: number; stderrOffset?: number; follow?: boolean } & SignalOption = {},
  ): AsyncGenerator<ExecEvent> {
    const res = await this.#request('GET', `${execPath(name, execId)}/output`, {
      query: { stdoutOffset: opts.stdoutOffset, stderrOffset: opts.stderrOffset, follow: opts.follow },
      signal: opts.signal,
      headers: { accept: 'application/x-ndjson' },
    });
    yield* parseNdjson<ExecEvent>(this.#chunks(res, opts.signal, this.#idleMs));
  }

  /** Sends a signal (e.g. `SIGTERM`) to the exec's process group. */
  async execSignal(name: string, execId: string, signal: string, opts: SignalOption = {}): Promise<{ execId: string; signal: string; delivered: boolean }> {
    return this.#json('POST', `${execPath(name, execId)}/signal`, { json: { signal }, signal: opts.signal });
  }

  // --- policy, logs ---------------------------------------------------------

  /** The network policy and its version (`policy: null` = none: all egress denied). */
  async getPolicy(name: string, opts: SignalOption = {}): Promise<PolicyState> {
    return this.#json<PolicyState>('GET', `${sandboxPath(name)}/policy`, { signal: opts.signal });
  }

  /** Replaces the network policy (`null` clears it); `applied` says whether a connected supervisor took it live. */
  async setPolicy(name: string, policy: unknown, opts: SignalOption = {}): Promise<PolicyUpdate> {
    return this.#json<PolicyUpdate>('PUT', `${sandboxPath(name)}/policy`, { json: policy, signal: opts.signal });
  }

  /** Supervisor and egress-decision log lines; `follow` keeps streaming new ones until the sandbox is gone. */
  async *logs(name: string, opts: { follow?: boolean; tail?: number } & SignalOption = {}): AsyncGenerator<LogLine> {
    const res = await this.#request('GET', `${sandboxPath(name)}/logs`, {
      query: { follow: opts.follow ? true : undefined, tail: opts.tail },
      signal: opts.signal,
      headers: { accept: 'application/x-ndjson' },
    });
    yield* parseNdjson<LogLine>(this.#chunks(res, opts.signal));
  }

  // --- files ---------------------------------------------------------------

  /** `PUT …/files?path=`: one file (raw bytes) or, with `tar`, a tar stream extracted at `path`. */
  async uploadFile(
    name: string,
    path: string,
    body: Readable | Buffer | Uint8Array,
    opts: { tar?: boolean } & SignalOption = {},
  ): Promise<unknown> {
    const res = await this.#request('PUT', `${sandboxPath(name)}/files`, {
      query: { path, format: opts.tar ? 'tar' : undefined },
      body: body instanceof Readable ? (body as AsyncIterable<Uint8Array>) : body,
      headers: { 'content-type': opts.tar ? 'application/x-tar' : 'application/octet-stream' },
      signal: opts.signal,
    });
    const text = await res.text();
    return text ? (JSON.parse(text) as unknown) : null;
  }

  /** `GET …/files?path=`: the file's bytes, or with `tar` the directory as a tar stream. */
  async downloadFile(name: string, path: string, opts: { tar?: boolean } & SignalOption = {}): Promise<Readable> {
    return (await this.download(name, path, opts)).body;
  }

  /** {@link downloadFile} with the response's content type and length (`null` when streamed without one). */
  async download(
    name: string,
    path: string,
    opts: { tar?: boolean } & SignalOption = {},
  ): Promise<{ body: Readable; contentType: string | null; contentLength: number | null }> {
    const res = await this.#request('GET', `${sandboxPath(name)}/files`, {
      query: { path, format: opts.tar ? 'tar' : undefined },
      signal: opts.signal,
    });
    const length = res.headers.get('content-length');
    return {
      body: Readable.from(this.#chunks(res, opts.signal), { objectMode: false }),
      contentType: res.headers.get('content-type'),
      contentLength: length !== null && /^\d+$/.test(length) ? Number(length) : null,
    };
  }

  // --- WebSockets ------------------------------------------------------------

  /** `ws(s)://…/v1/sandboxes/:name/ssh`: a raw SSH byte stream in binary frames. */
  sshUrl(name: string): string {
    return this.#wsUrl(`${sandboxPath(name)}/ssh`, {});
  }

  /** `ws(s)://…/v1/sandboxes/:name/exec?command=…&tty=…`: interactive exec with channel-byte frames. */
  execUrl(name: string, opts: ExecWebSocketOptions): string {
    return this.#wsUrl(`${sandboxPath(name)}/exec`, {
      // The route takes argv only (one `command` parameter is a program name), so a string goes through sh -c.
      command: typeof opts.command === 'string' ? ['sh', '-c', opts.command] : opts.command,
      tty: opts.tty,
      workdir: opts.workdir,
      user: opts.user,
      env: opts.env ? Object.entries(opts.env).map(([k, v]) => `${k}=${v}`) : undefined,
      timeoutSeconds: opts.timeoutSeconds,
      cols: opts.cols,
      rows: opts.rows,
      requestId: opts.requestId,
      stdoutOffset: opts.stdoutOffset || undefined,
      stderrOffset: opts.stderrOffset || undefined,
    });
  }

  /** Headers a WebSocket to the gateway needs (the bearer token, if any). */
  wsHeaders(): Record<string, string> {
    return this.#token ? { authorization: `Bearer ${this.#token}` } : {};
  }

  /**
   * Opens a WebSocket to one of the URLs above: permessage-deflate off, Nagle
   * off, and liveness: it pings the gateway and is terminated (a `close` with
   * 1006) once `streamIdleTimeoutMs` pass without hearing anything back.
   */
  openWebSocket(url: string): WebSocket {
    const ws = new WebSocket(url, { headers: this.wsHeaders(), perMessageDeflate: false, skipUTF8Validation: true });
    ws.once('upgrade', (res) => res.socket.setNoDelay(true));
    const idleMs = this.#idleMs;
    if (idleMs > 0) ws.once('open', () => keepAlive(ws, { intervalMs: Math.min(15_000, Math.max(1, Math.floor(idleMs / 3))), timeoutMs: idleMs }));
    return ws;
  }

  // --- plumbing ------------------------------------------------------------

  async #json<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const res = await this.#request(method, path, { ...opts, headers: { accept: 'application/json', ...opts.headers } });
    const text = await this.#text(res);
    return (text ? JSON.parse(text) : null) as T;
  }

  async #request(method: string, path: string, opts: RequestOptions = {}): Promise<Response> {
    const url = new URL(this.baseUrl + path);
    for (const [key, value] of Object.entries(opts.query ?? {})) {
      if (value === undefined) continue;
      if (Array.isArray(value)) for (const v of value as string[]) url.searchParams.append(key, v);
      else url.searchParams.set(key, String(value));
    }
    const headers: Record<string, string> = { ...opts.headers };
    if (this.#token) headers.authorization = `Bearer ${this.#token}`;
    let body = opts.body;
    if (opts.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(opts.json);
    }
    const streaming = body !== undefined && body !== null && typeof body === 'object' && Symbol.asyncIterator in body;
    let res: Response;
    try {
      res = await this.#fetch(url, {
        method,
        headers,
        body,
        signal: opts.signal,
        ...(streaming ? { duplex: 'half' as const } : {}),
      });
    } catch (err) {
      if (opts.signal?.aborted) throw opts.signal.reason ?? err;
      throw connectionError(this.baseUrl, err);
    }
    if (!res.ok) {
      const text = await this.#text(res).catch(() => '');
      throw OpenShellApiError.fromBody(res.status, res.statusText, text);
    }
    return res;
  }

  async #text(res: Response): Promise<string> {
    try {
      return await res.text();
    } catch (err) {
      throw connectionError(this.baseUrl, err);
    }
  }

  /**
   * The response body as byte chunks. Aborting `signal` ends the iteration with
   * its reason even if the `fetch` in use ignores signals; leaving the loop
   * early cancels the body (closing the stream); a connection lost mid-stream
   * names the gateway.
   */
  async *#chunks(res: Response, signal?: AbortSignal, idleMs = 0): AsyncGenerator<Uint8Array> {
    if (!res.body) return;
    const reader = res.body.getReader();
    const onAbort = () => void reader.cancel(signal?.reason).catch(() => undefined);
    signal?.addEventListener('abort', onAbort, { once: true });
    // A read that waits longer than `idleMs` cancels the body: the pending read then ends.
    let idleTimer: NodeJS.Timeout | null = null;
    let idled = false;
    const idleError = () =>
      new OpenShellConnectionError(
        this.baseUrl,
        'ESTREAMIDLE',
        `no data on the stream for ${idleMs / 1000} s (the gateway sends a keepalive after 15 s of silence); the connection is presumed dead`,
      );
    try {
      for (;;) {
        if (idleMs > 0) {
          idleTimer = setTimeout(() => {
            idled = true;
            void reader.cancel(idleError()).catch(() => undefined);
          }, idleMs);
        }
        let next: { done: boolean; value?: Uint8Array };
        try {
          next = await reader.read();
        } catch (err) {
          if (signal?.aborted) throw signal.reason;
          if (idled) throw idleError();
          if ((err as Error)?.name === 'AbortError') throw err;
          throw connectionError(this.baseUrl, err);
        } finally {
          if (idleTimer) clearTimeout(idleTimer);
          idleTimer = null;
        }
        if (signal?.aborted) throw signal.reason;
        if (idled) throw idleError();
        if (next.done) return;
        if (next.value) yield next.value;
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      await reader.cancel().catch(() => undefined);
    }
  }

  #wsUrl(path: string, query: Query): string {
    const url = new URL(this.baseUrl + path);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    for (const [key, value] of Object.entries(query)) {
      if (value === undefined) continue;
      if (Array.isArray(value)) for (const v of value as string[]) url.searchParams.append(key, v);
      else url.searchParams.set(key, String(value));
    }
    return url.href;
  }
}

function sandboxPath(name: string): string {
  return `/v1/sandboxes/${encodeURIComponent(name)}`;
}

function execPath(name: string, execId: string): string {
  return `${sandboxPath(name)}/execs/${encodeURIComponent(execId)}`;
}

/** `: reason: message` from the Ready condition, for error messages. */
export function describeCondition(sandbox: Sandbox): string {
  const c = sandbox.conditions.find((x) => x.type === 'Ready') ?? sandbox.conditions[0];
  if (!c) return '';
  return `, reason ${c.reason}${c.message ? `: ${c.message}` : ''}`;
}

function formatSeconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${(ms / 1000).toFixed(1)}s`;
}

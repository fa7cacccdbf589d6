import type { Socket } from 'node:net';
import { send, SENT, HELD, FULL, type SendResult } from './raw-write.js';

/*
 * A small incremental HTTP/1.1 reader: it only parses heads and finds body
 * boundaries (Content-Length, chunked); body bytes are forwarded as they
 * arrive, never buffered whole, never re-encoded.
 */

const CRLFCRLF = Buffer.from('\r\n\r\n');
const HIGH_WATER = 256 * 1024;
// Bytes read into a reused buffer (see `ReadBuffer`) and queued: copied out up to this size, kept above.
const COPY_MAX = 16 * 1024;

/**
 * The owner of a reused read buffer (net's `onread`): a reader that holds on
 * to a pushed chunk past the `push` call sets `kept`, and the next read gets
 * a fresh buffer.
 */
export interface ReadBuffer {
  kept: boolean;
}

/** One body being forwarded by `SocketReader.pipeBody`. */
class BodyPump {
  readonly dst: Socket;
  readonly close: boolean;
  remaining: number;
  readonly scanner: ChunkedScanner | null;
  head: Buffer | null;
  /** Waiting for `dst` to drain. */
  waiting = false;
  done = false;
  error: Error | null = null;
  /** Called once at the end (null: through; else why not), unless it ended inside `pipeBodyThen`. */
  then: ((err: Error | null) => void) | null = null;
  /** The drain listener, made the first time the pump waits (most bodies never do). */
  onDrain: (() => void) | null = null;

  constructor(dst: Socket, framing: Framing, head: Buffer | null) {
    this.dst = dst;
    this.close = framing.kind === 'close';
    this.remaining = framing.kind === 'length' ? framing.length : 0;
    this.scanner = framing.kind === 'chunked' ? new ChunkedScanner() : null;
    this.head = head;
  }
}

/**
 * Reads a socket's bytes for the proxy: message heads are taken with
 * `onHead` (or `readHead`, its promise); bodies are pushed straight through
 * to the peer by `pipeBodyThen`, synchronously per chunk as they arrive (no
 * promise per chunk, no copy).
 * Pauses the socket while more than HIGH_WATER bytes wait, or while the
 * body's peer does not take more, so backpressure reaches the sender.
 */
export class SocketReader {
  readonly sock: Socket;
  readonly #owner: ReadBuffer | null;
  #queue: Buffer[] = [];
  #queued = 0;
  #eof = false;
  #err: Error | null = null;
  #wake: (() => void) | null = null;
  #paused = false;
  #detached = false;
  #pump: BodyPump | null = null;
  #headScan = 0;
  /**
   * The last head `takeHead` cut from a chunk with bytes after it, and those
   * bytes (queued): a body that follows in the same buffer goes out with its
   * head as one view (see `pipeBodyThen`).
   */
  #cutFrom: Buffer | null = null;
  #cutHead: Buffer | null = null;
  #cutRest: Buffer | null = null;
  /** The pending `onHead` (see `#retryHead`). */
  #headCb: ((h: Head) => void) | null = null;
  #headLimit = 0;
  #headConnectLimit = 0;

  /**
   * `owner`: the socket's bytes arrive through `push`, as views of the
   * owner's reused read buffer (net's `onread`), not through 'data' events.
   */
  constructor(sock: Socket, owner: ReadBuffer | null = null) {
    this.sock = sock;
    this.#owner = owner;
    if (!owner) sock.on('data', this.#onData);
    sock.on('end', this.#onEnd);
    sock.on('close', this.#onEnd);
    sock.on('error', this.#onError);
  }

  /** Bytes read into the owner's buffer (only for a reader with an owner). */
  push(c: Buffer): boolean {
    const p = this.#pump;
    if (p !== null && !p.waiting && this.#queue.length === 0) {
      this.#pumpChunk(p, c);
      return true;
    }
    if (c.length <= COPY_MAX) {
      const copy = Buffer.allocUnsafe(c.length);
      copy.set(c);
      this.#enqueue(copy);
    }
    else {
      this.#owner!.kept = true;
      this.#enqueue(c);
    }
    return true;
  }

  #onData = (c: Buffer): void => {
    const p = this.#pump;
    if (p !== null && !p.waiting && this.#queue.length === 0) this.#pumpChunk(p, c);
    else this.#enqueue(c);
  };

  #enqueue(c: Buffer): void {
    this.#queue.push(c);
    this.#queued += c.length;
    if (this.#queued >= HIGH_WATER && !this.#paused) {
      this.#paused = true;
      this.sock.pause();
    }
    this.#signal();
  }

  #onEnd = (): void => {
    this.#eof = true;
    const p = this.#pump;
    if (p !== null && !p.waiting && this.#queue.length === 0) this.#pumpEnd(p);
    this.#signal();
  };

  #onError = (err: Error): void => {
    this.#err = err;
    const p = this.#pump;
    if (p !== null) this.#pumpFinish(p, err);
    this.#signal();
  };

  #signal(): void {
    const w = this.#wake;
    if (w) {
      this.#wake = null;
      w();
    }
  }

  get ended(): boolean {
    return (this.#eof || this.#err !== null) && this.#queue.length === 0;
  }

  #shift(): Buffer | undefined {
    const c = this.#queue.shift();
    if (c !== undefined) {
      this.#headScan = 0;
      this.#queued -= c.length;
      if (this.#paused && this.#queued < HIGH_WATER) {
        this.#paused = false;
        if (!this.#detached && this.#pump?.waiting !== true) this.sock.resume();
      }
    }
    return c;
  }

  /** The next byte, not consumed: undefined while none is read yet, null at the end of the stream (or an error). */
  firstByte(): number | null | undefined {
    for (const c of this.#queue) if (c.length > 0) return c[0]!;
    return this.#eof || this.#err ? null : undefined;
  }

  unshift(b: Buffer): void {
    if (b.length === 0) return;
    this.#headScan = 0;
    this.#queue.unshift(b);
    this.#queued += b.length;
  }

  /**
   * Stop reading: returns the bytes read but not consumed. A body being
   * piped stops. The socket is left paused unless the caller takes over its
   * reads in the same tick (`pause` false: no read stop/start round trip).
   */
  detach(pause = true): Buffer[] {
    this.#detached = true;
    this.#pump = null;
    if (pause) this.sock.pause();
    this.sock.off('data', this.#onData);
    this.sock.off('end', this.#onEnd);
    this.sock.off('close', this.#onEnd);
    this.sock.off('error', this.#onError);
    const q = this.#queue;
    this.#queue = [];
    this.#queued = 0;
    return q;
  }

  /**
   * Stream one body to `dst` per `framing`, with backpressure: each chunk is
   * written as it arrives. Bytes past the end stay queued for the next head.
   * A 'close'-delimited body ends `dst` when the socket ends. `head` (the
   * message head) goes first: together with the first body bytes when they
   * are already read, otherwise at once (a whole Content-Length body read
   * with its head, right after it, goes in one write of both, without a
   * pump). Returns null when the body is
   * already through, the error (BodyError, or the socket's) when it failed
   * already, else undefined, and `then` is called once at its end (with
   * null, or the error).
   */
  pipeBodyThen(dst: Socket, framing: Framing, head: Buffer | null, then: (err: Error | null) => void): Error | null | undefined {
    if (framing.kind === 'length' && head !== null && head === this.#cutHead) {
      const from = this.#cutFrom!;
      const rest = this.#cutRest!;
      this.#cutFrom = this.#cutHead = this.#cutRest = null;
      const n = framing.length;
      // The whole body was read with its head, right after it: one write of both, no pump.
      if (this.#queue[0] === rest && rest.length >= n) {
        this.#shift();
        if (rest.length > n) this.unshift(rest.subarray(n));
        const whole = head.length + n;
        const r = send(dst, whole === from.length ? from : from.subarray(0, whole));
        // Not flushed synchronously: the socket holds a reference to the buffer.
        if (this.#owner !== null && r !== SENT) this.#owner.kept = true;
        return null;
      }
    }
    if (framing.kind === 'none' || (head !== null && this.#queue.length === 0)) {
      if (head !== null) send(dst, head);
      if (framing.kind === 'none') return null;
      head = null;
    }
    const p = new BodyPump(dst, framing, head);
    this.#pump = p;
    this.#pumpRun(p);
    if (p.done) return p.error;
    p.then = then;
    return undefined;
  }

  /** Feed queued bytes to the pump; then end it at EOF, or keep the socket reading. */
  #pumpRun(p: BodyPump): void {
    while (this.#pump === p && !p.waiting) {
      const c = this.#shift();
      if (c === undefined) break;
      this.#pumpChunk(p, c);
    }
    if (this.#pump !== p || p.waiting) return;
    if (this.#eof || this.#err) this.#pumpEnd(p);
    else if (!this.#paused && !this.#detached) this.sock.resume();
  }

  #onPumpDrain(p: BodyPump): void {
    if (this.#pump !== p) return;
    p.waiting = false;
    if (p.dst.destroyed) return this.#pumpFinish(p, new BodyError('peer closed'));
    this.#pumpRun(p);
  }

  #pumpChunk(p: BodyPump, c: Buffer): void {
    let end = -1;
    if (p.scanner !== null) {
      try {
        end = p.scanner.scan(c);
      } catch (err) {
        if (p.head !== null) p.dst.write(p.head);
        return this.#pumpFinish(p, new BodyError((err as Error).message));
      }
    } else if (!p.close) {
      if (c.length >= p.remaining) end = p.remaining;
      else p.remaining -= c.length;
    }
    const dst = p.dst;
    if (end < 0 && dst.destroyed) return this.#pumpFinish(p, new BodyError('peer closed'));
    let body = c;
    if (end >= 0 && end < c.length) {
      body = c.subarray(0, end);
      const rest = c.subarray(end);
      // A view of the owner's read buffer: the next head reads it later.
      if (this.#owner !== null) {
        if (rest.length <= COPY_MAX) this.unshift(Buffer.from(rest));
        else {
          this.#owner.kept = true;
          this.unshift(rest);
        }
      } else this.unshift(rest);
    }
    let r: SendResult = SENT;
    if (p.head !== null) {
      r = writeJoined(dst, p.head, body);
      p.head = null;
    } else if (body.length > 0) r = send(dst, body);
    // Not flushed synchronously: the socket holds a reference to the read buffer.
    if (this.#owner !== null && r !== SENT) this.#owner.kept = true;
    if (end >= 0) return this.#pumpFinish(p, null);
    if (r === FULL) {
      p.waiting = true;
      this.sock.pause();
      const onDrain = (p.onDrain ??= (): void => {
        dst.off('drain', onDrain);
        dst.off('close', onDrain);
        this.#onPumpDrain(p);
      });
      dst.on('drain', onDrain);
      dst.on('close', onDrain);
    }
  }

  /** The socket ended (or closed) with the pump waiting for more. */
  #pumpEnd(p: BodyPump): void {
    if (p.head !== null) {
      p.dst.write(p.head);
      p.head = null;
    }
    if (this.#err) return this.#pumpFinish(p, this.#err);
    if (p.close) {
      p.dst.end();
      return this.#pumpFinish(p, null);
    }
    this.#pumpFinish(p, new BodyError('connection closed mid-body'));
  }

  #pumpFinish(p: BodyPump, err: Error | null): void {
    if (p.done) return;
    p.done = true;
    p.error = err;
    if (this.#pump === p) this.#pump = null;
    if (p.waiting && p.onDrain !== null) {
      p.dst.off('drain', p.onDrain);
      p.dst.off('close', p.onDrain);
    }
    p.then?.(err);
  }

  /** Call `cb` once, when bytes arrive or the stream ends (replaces a previous waiter). */
  onReadable(cb: () => void): void {
    this.#wake = cb;
  }

  /**
   * Take one message head (through the empty line) from the bytes read so
   * far, without waiting: undefined while it is incomplete (nothing is
   * consumed then). Returns null on EOF (or error) before any byte,
   * 'too-large' past `limit` (`connectLimit` once the head is seen to be a
   * CONNECT), 'truncated' on EOF mid-head.
   */
  takeHead(limit: number, connectLimit = limit): Buffer | 'too-large' | 'truncated' | null | undefined {
    const q = this.#queue;
    if (q.length === 0) return this.#eof || this.#err ? null : undefined;
    let acc = q[0]!;
    for (;;) {
      const idx = findHeadEnd(acc, this.#headScan);
      const max =
        connectLimit < limit && acc.length >= 8 && acc[0] === 0x43 && acc.toString('latin1', 0, 8) === 'CONNECT '
          ? connectLimit
          : limit;
      if (idx >= 0) {
        const end = idx + 4;
        if (end > max) return 'too-large';
        this.#shift();
        const h = end === acc.length ? acc : acc.subarray(0, end);
        if (end < acc.length) {
          const rest = acc.subarray(end);
          this.unshift(rest);
          this.#cutFrom = acc;
          this.#cutHead = h;
          this.#cutRest = rest;
        } else this.#cutFrom = this.#cutHead = this.#cutRest = null;
        return h;
      }
      if (acc.length > max) return 'too-large';
      // The next scan starts where a CRLFCRLF split across reads could begin.
      this.#headScan = Math.max(0, acc.length - 3);
      if (q.length === 1) break;
      acc = Buffer.concat([acc, q[1]!]);
      q.splice(0, 2, acc);
    }
    return this.#eof || this.#err ? 'truncated' : undefined;
  }

  /** `onHead` as a promise. */
  readHead(limit: number, connectLimit = limit): Promise<Head> {
    return new Promise((resolve) => this.onHead(limit, connectLimit, resolve));
  }

  /** `takeHead`, waiting for bytes as needed: `cb` gets the head, at once when it is read already. */
  onHead(limit: number, connectLimit: number, cb: (h: Head) => void): void {
    const h = this.takeHead(limit, connectLimit);
    if (h !== undefined) return cb(h);
    this.#headLimit = limit;
    this.#headConnectLimit = connectLimit;
    this.#headCb = cb;
    this.#wake = this.#retryHead;
  }

  /** The waiter `onHead` leaves: one per reader, not a closure per head. */
  #retryHead = (): void => {
    const next = this.takeHead(this.#headLimit, this.#headConnectLimit);
    if (next === undefined) {
      this.#wake = this.#retryHead;
      return;
    }
    const cb = this.#headCb!;
    this.#headCb = null;
    cb(next);
  };
}

/**
 * Index of the first CRLF CRLF in `b` at or after `from`, or -1. Heads are
 * short: a JS scan that skips four bytes past any byte that is neither CR
 * nor LF beats a call into C++; long inputs use `indexOf`.
 */
export function findHeadEnd(b: Buffer, from: number): number {
  const n = b.length;
  if (n - from > 1024) return b.indexOf(CRLFCRLF, from);
  for (let i = from + 3; i < n; ) {
    const c = b[i];
    if (c === 0x0a) {
      if (b[i - 1] === 0x0d && b[i - 2] === 0x0a && b[i - 3] === 0x0d) return i - 3;
      i += 2; // this LF can still be a match's first LF
    } else if (c === 0x0d) i += 1; // ...or this CR its second CR
    else i += 4; // no match holds this byte
  }
  return -1;
}

/** A message head read by `readHead`/`onHead`, or why there is none (see `takeHead`). */
export type Head = Buffer | 'too-large' | 'truncated' | null;

/** What the proxy needs from a head's header fields. */
interface HeadFields {
  transferEncoding: string[] | null;
  /** A single Content-Length of plain digits as its number; otherwise the values as sent (trimmed). */
  contentLength: string[] | number | null;
  upgrade: boolean;
  /** The first protocol an Upgrade field offers other than websocket, or null. */
  upgradeOther: string | null;
  /** Connection tokens the proxy acts on. */
  close: boolean;
  keepAlive: boolean;
  connUpgrade: boolean;
  /** How many Host fields, and the last one's value in `raw` (OWS trimmed); -1 when none. */
  hosts: number;
  hostFrom: number;
  hostEnd: number;
}

// tchar (RFC 9110 5.6.2) by byte value: the characters of a field name.
const TCHAR = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") TCHAR[c.charCodeAt(0)] = 1;

/**
 * The fields of `raw[from, end)` (`from`: the first field line; `end`: the
 * head's final CRLF CRLF), or null when a line is malformed (`fieldProblem`
 * tells why). One pass over the bytes checks every line (RFC 9112 5: token
 * ":" value, no CR, LF or NUL in the value, lines joined by CRLF); only the
 * fields the proxy acts on are decoded, with no text made of the others.
 */
function headFields(raw: Buffer, from: number, end: number): HeadFields | null {
  const f: HeadFields = {
    transferEncoding: null,
    contentLength: null,
    upgrade: false,
    upgradeOther: null,
    close: false,
    keepAlive: false,
    connUpgrade: false,
    hosts: 0,
    hostFrom: -1,
    hostEnd: -1,
  };
  if (from >= end) return f;
  for (let pos = from; ; ) {
    let i = pos;
    while (i < end && TCHAR[raw[i]!] === 1) i++;
    if (i === pos || i === end || raw[i] !== 0x3a) return null;
    const colon = i;
    for (i++; i < end; i++) {
      const c = raw[i]!;
      if (c === 0x0d) break;
      if (c === 0x0a || c === 0) return null;
    }
    const eol = i;
    // Only names of these lengths can be fields the proxy acts on; compared in place.
    switch (colon - pos) {
      case 14:
        if (nameIs(raw, pos, 'content-length')) contentLengthField(f, raw, colon + 1, eol);
        break;
      case 17:
        if (nameIs(raw, pos, 'transfer-encoding')) (f.transferEncoding ??= []).push(raw.toString('latin1', colon + 1, eol).trim());
        break;
      case 7:
        if (nameIs(raw, pos, 'upgrade')) upgradeField(f, raw, colon + 1, eol);
        break;
      case 10:
        if (nameIs(raw, pos, 'connection')) connectionTokens(f, raw, colon + 1, eol);
        break;
      case 4:
        if (nameIs(raw, pos, 'host')) hostField(f, raw, colon + 1, eol);
        break;
    }
    if (eol === end) return f;
    // A CR ends a line only with its LF, and another field line must follow.
    if (raw[eol + 1] !== 0x0a) return null;
    pos = eol + 2;
  }
}

/** One Content-Length field's value, `raw[from, end)`: a number while it is the only one and plain digits, else text. */
function contentLengthField(f: HeadFields, raw: Buffer, from: number, end: number): void {
  const prev = f.contentLength;
  if (prev === null) {
    const a = owsSkip(raw, from, end);
    const b = owsBack(raw, a, end);
    let n = 0;
    let i = a;
    for (; i < b && isDigit(raw[i]!); i++) n = n * 10 + raw[i]! - 0x30;
    if (i === b && b > a && b - a <= 15) {
      f.contentLength = n;
      return;
    }
  }
  const values = prev === null ? [] : typeof prev === 'number' ? [String(prev)] : prev;
  values.push(raw.toString('latin1', from, end).trim());
  f.contentLength = values;
}

/**
 * An Upgrade field, `raw[from, end)`: a comma list of protocols, each a
 * name with an optional `/version`. Notes the first that is not websocket.
 */
function upgradeField(f: HeadFields, raw: Buffer, from: number, end: number): void {
  f.upgrade = true;
  for (let i = from; i < end && f.upgradeOther === null; ) {
    const j = listItemEnd(raw, i, end);
    const a = owsSkip(raw, i, j);
    const b = owsBack(raw, a, j);
    let n = a;
    while (n < b && raw[n] !== 0x2f) n++;
    if (b > a && !(n - a === 9 && nameIs(raw, a, 'websocket'))) f.upgradeOther = raw.toString('latin1', a, b);
    i = j + 1;
  }
}

/** A Host field's value, `raw[from, end)` without its OWS. */
function hostField(f: HeadFields, raw: Buffer, from: number, end: number): void {
  const a = owsSkip(raw, from, end);
  f.hosts++;
  f.hostFrom = a;
  f.hostEnd = owsBack(raw, a, end);
}

/** Past the OWS (space, tab) at the start of `raw[from, end)`. */
function owsSkip(raw: Buffer, from: number, end: number): number {
  while (from < end && (raw[from] === 0x20 || raw[from] === 0x09)) from++;
  return from;
}

/** The end of `raw[from, end)` without its trailing OWS. */
function owsBack(raw: Buffer, from: number, end: number): number {
  while (end > from && (raw[end - 1] === 0x20 || raw[end - 1] === 0x09)) end--;
  return end;
}

/** Where the comma-list item starting at `from` ends (its comma, or `end`). */
function listItemEnd(raw: Buffer, from: number, end: number): number {
  while (from < end && raw[from] !== 0x2c) from++;
  return from;
}

/** Whether `text[0, end)` is a token (a field name), by the same table as `headFields`. */
function isToken(text: string, end: number): boolean {
  for (let i = 0; i < end; i++) {
    const c = text.charCodeAt(i);
    if (c > 0xff || TCHAR[c] !== 1) return false;
  }
  return end > 0;
}

/** Whether `raw` at `pos` spells `lower` (lower-case letters and '-'), in any case. */
function nameIs(raw: Buffer, pos: number, lower: string): boolean {
  for (let i = 0; i < lower.length; i++) {
    if ((raw[pos + i]! | 0x20) !== lower.charCodeAt(i)) return false;
  }
  return true;
}

/** The Connection tokens the proxy acts on, in `raw[from, end)` (a comma list; OWS is space and tab). */
function connectionTokens(f: HeadFields, raw: Buffer, from: number, end: number): void {
  for (let i = from; i < end; ) {
    const j = listItemEnd(raw, i, end);
    const a = owsSkip(raw, i, j);
    const n = owsBack(raw, a, j) - a;
    if (n === 5 && nameIs(raw, a, 'close')) f.close = true;
    else if (n === 10 && nameIs(raw, a, 'keep-alive')) f.keepAlive = true;
    else if (n === 7 && nameIs(raw, a, 'upgrade')) f.connUpgrade = true;
    i = j + 1;
  }
}

/** A request's header lines as sent (the request line excluded). */
export function headerLines(req: RequestHead): string[] {
  const end = req.raw.length - 4;
  return req.fieldsFrom >= end ? [] : req.raw.toString('latin1', req.fieldsFrom, end).split('\r\n');
}

/** Why field lines failed `headFields` (the first problem, line by line). */
function fieldProblem(section: string): string {
  for (const line of section.split('\r\n')) {
    if (line.includes('\n') || line.includes('\r')) return 'bare CR or LF in head';
    const colon = line.indexOf(':');
    if (colon <= 0) return 'malformed header line';
    if (!isToken(line, colon)) return 'invalid header name';
    if (line.includes('\0')) return 'invalid header value';
  }
  return 'malformed header line';
}

/** A head's text without its final CRLF CRLF. */
function headText(raw: Buffer): string {
  return raw.toString('latin1', 0, raw.length - 4);
}

/** Why a start line failed its pattern. */
function startLineProblem(text: string, what: string): string {
  const eol = text.indexOf('\r\n');
  const line = eol < 0 ? text : text.slice(0, eol);
  return line.includes('\n') || line.includes('\r') ? 'bare CR or LF in head' : `malformed ${what} line`;
}

/**
 * The request line of `raw[0, end)`, read byte by byte: `method SP target
 * SP HTTP/1.[01]`, then CRLF (or the end of the head). The method is a
 * token; the target has no white space (JavaScript's \s: HT, LF, VT, FF,
 * CR, SP, NBSP). null when malformed.
 */
function requestLine(raw: Buffer, end: number): { method: string; target: string; version: '1.0' | '1.1'; fieldsFrom: number } | null {
  let i = 0;
  while (i < end && TCHAR[raw[i]!] === 1) i++;
  if (i === 0 || i === end || raw[i] !== 0x20) return null;
  const sp = i;
  for (i++; i < end && !isSpace(raw[i]!); i++);
  if (i === sp + 1 || end - i < 9 || raw[i] !== 0x20) return null;
  const tEnd = i;
  const v = httpVersionAt(raw, i + 1);
  if (v === null) return null;
  i += 9;
  let fieldsFrom = end;
  if (i < end) {
    if (raw[i] !== 0x0d || raw[i + 1] !== 0x0a) return null;
    fieldsFrom = i + 2;
  }
  return { method: methodName(raw, sp), target: raw.toString('latin1', sp + 1, tEnd), version: v, fieldsFrom };
}

// JavaScript's \s within one byte.
function isSpace(c: number): boolean {
  return c === 0x20 || (c >= 0x09 && c <= 0x0d) || c === 0xa0;
}

const METHODS = ['GET', 'POST', 'PUT', 'HEAD', 'DELETE', 'PATCH', 'OPTIONS', 'CONNECT'];

/** `raw[0, len)` as text: the common methods as shared strings, without a copy. */
function methodName(raw: Buffer, len: number): string {
  for (const m of METHODS) {
    if (m.length !== len) continue;
    let k = 0;
    while (k < len && raw[k] === m.charCodeAt(k)) k++;
    if (k === len) return m;
  }
  return raw.toString('latin1', 0, len);
}

export type Framing = { kind: 'none' } | { kind: 'length'; length: number } | { kind: 'chunked' } | { kind: 'close' };
const FRAMING_NONE: Framing = { kind: 'none' };

export interface RequestHead {
  raw: Buffer;
  method: string;
  target: string;
  version: '1.0' | '1.1';
  /** Where the field lines start in `raw` (see `headerLines`). */
  fieldsFrom: number;
  framing: Framing;
  keepAlive: boolean;
  upgrade: boolean;
  /** The first protocol an Upgrade field offers other than websocket (h2c, say), or null. */
  upgradeOther: string | null;
  /** The Host field's value in `raw` (OWS trimmed), `[hostFrom, hostEnd)`; -1 when there is none. */
  hostFrom: number;
  hostEnd: number;
}

/** The request's Host field value, or null without one. */
export function hostHeader(req: RequestHead): string | null {
  return req.hostFrom < 0 ? null : req.raw.toString('latin1', req.hostFrom, req.hostEnd);
}

export interface ResponseHead {
  raw: Buffer;
  status: number;
  transferEncoding: string[] | null;
  /** See `HeadFields`. */
  contentLength: string[] | number | null;
  keepAlive: boolean;
}

function chunkedLast(te: string[]): boolean {
  const codings = te.join(',').split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);
  return codings.length > 0 && codings[codings.length - 1] === 'chunked';
}

function contentLength(values: string[] | number): number | null | 'bad' {
  if (typeof values === 'number') return values;
  if (values.length === 1 && /^\d{1,15}$/.test(values[0]!)) return Number(values[0]);
  let n: number | null = null;
  for (const v of values.join(',').split(',')) {
    const s = v.trim();
    if (!/^\d{1,15}$/.test(s)) return 'bad';
    const x = Number(s);
    if (n !== null && n !== x) return 'bad';
    n = x;
  }
  return n;
}

export function parseRequestHead(raw: Buffer): RequestHead | string {
  const end = raw.length - 4;
  const line = requestLine(raw, end);
  if (line === null) return startLineProblem(headText(raw), 'request');
  const from = line.fieldsFrom;
  const f = headFields(raw, from, end);
  if (f === null) return fieldProblem(headText(raw).slice(from));
  // RFC 9112 3.2: a server answers 400 to more than one; a proxy that passed them on would let the origin pick another host.
  if (f.hosts > 1) return 'more than one Host header';
  const version = line.version;
  const te = f.transferEncoding;
  const cl = f.contentLength;
  let framing: Framing = FRAMING_NONE;
  if (te) {
    // RFC 9112 6.1: both is a smuggling vector; a request body must end chunked.
    if (cl !== null) return 'both Transfer-Encoding and Content-Length';
    if (!chunkedLast(te)) return 'unsupported Transfer-Encoding';
    framing = { kind: 'chunked' };
  } else if (cl !== null) {
    const n = contentLength(cl);
    if (n === 'bad') return 'invalid Content-Length';
    if (n) framing = { kind: 'length', length: n };
  }
  return {
    raw,
    method: line.method,
    target: line.target,
    version,
    fieldsFrom: from,
    framing,
    keepAlive: version === '1.1' ? !f.close : f.keepAlive,
    upgrade: f.upgrade && f.connUpgrade,
    upgradeOther: f.upgradeOther,
    hostFrom: f.hostFrom,
    hostEnd: f.hostEnd,
  };
}

export function parseResponseHead(raw: Buffer): ResponseHead | string {
  const end = raw.length - 4;
  const from = statusLineEnd(raw, end);
  if (from < 0) return startLineProblem(headText(raw), 'status');
  const f = headFields(raw, from, end);
  if (f === null) return fieldProblem(headText(raw).slice(from));
  return {
    raw,
    status: (raw[9]! - 48) * 100 + (raw[10]! - 48) * 10 + (raw[11]! - 48),
    transferEncoding: f.transferEncoding,
    contentLength: f.contentLength,
    keepAlive: raw[7] === 0x31 ? !f.close : f.keepAlive,
  };
}

/**
 * Where the fields start after a well-formed status line in `raw[0, end)`
 * (`end` when it is the only line), or -1. The line is
 * `HTTP/1.[01] DDD[ reason]` with no CR or LF in the reason, read byte by
 * byte with no text made.
 */
function statusLineEnd(raw: Buffer, end: number): number {
  if (end < 12) return -1;
  if (httpVersionAt(raw, 0) === null || raw[8] !== 0x20 || !isDigit(raw[9]!) || !isDigit(raw[10]!) || !isDigit(raw[11]!)) return -1;
  let i = 12;
  if (i === end) return end;
  if (raw[i] === 0x20) {
    for (i++; i < end; i++) {
      const c = raw[i]!;
      if (c === 0x0d) break;
      if (c === 0x0a) return -1;
    }
    if (i === end) return end;
  }
  // CRLF ends the status line; the fields follow it.
  return raw[i] === 0x0d && raw[i + 1] === 0x0a ? i + 2 : -1;
}

const HTTP_1_ = Buffer.from('HTTP/1.', 'latin1');

/** The version spelled `HTTP/1.0` or `HTTP/1.1` at `at` in `raw` (the caller checks there is room), or null. */
function httpVersionAt(raw: Buffer, at: number): '1.0' | '1.1' | null {
  for (let k = 0; k < 7; k++) if (raw[at + k] !== HTTP_1_[k]) return null;
  const v = raw[at + 7];
  return v === 0x31 ? '1.1' : v === 0x30 ? '1.0' : null;
}

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

/** RFC 9112 6.3: how the response body is delimited. */
export function responseFraming(method: string, res: ResponseHead): Framing | string {
  if (method === 'HEAD' || res.status < 200 || res.status === 204 || res.status === 304) return { kind: 'none' };
  const te = res.transferEncoding;
  if (te) return chunkedLast(te) ? { kind: 'chunked' } : { kind: 'close' };
  const cl = res.contentLength;
  if (cl !== null) {
    const n = contentLength(cl);
    if (n === 'bad') return 'invalid Content-Length';
    return n ? { kind: 'length', length: n } : { kind: 'none' };
  }
  return { kind: 'close' };
}

const CS = {
  Size: 0,
  Ext: 1,
  SizeLf: 2,
  Data: 3,
  DataCr: 4,
  DataLf: 5,
  TrailerStart: 6,
  Trailer: 7,
  TrailerLf: 8,
  EndLf: 9,
  Done: 10,
} as const;

function hexVal(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

/** Finds where a chunked body ends without decoding it (the bytes pass through as sent). */
export class ChunkedScanner {
  #state: number = CS.Size;
  #size = 0;
  #digits = 0;
  #remaining = 0;
  #line = 0;

  /** Index just past the end of the body in `buf`, or -1 if it continues. Throws on malformed framing. */
  scan(buf: Buffer): number {
    const n = buf.length;
    let i = 0;
    while (i < n) {
      switch (this.#state) {
        case CS.Data: {
          const take = Math.min(this.#remaining, n - i);
          i += take;
          this.#remaining -= take;
          if (this.#remaining === 0) this.#state = CS.DataCr;
          break;
        }
        case CS.Size: {
          const c = buf[i++]!;
          const v = hexVal(c);
          if (v >= 0) {
            if (++this.#digits > 13) throw new Error('chunk size too large');
            this.#size = this.#size * 16 + v;
          } else if (this.#digits > 0 && (c === 0x3b || c === 0x20 || c === 0x09)) {
            this.#state = CS.Ext;
            this.#line = 0;
          } else if (this.#digits > 0 && c === 0x0d) {
            this.#state = CS.SizeLf;
          } else throw new Error('malformed chunk size');
          break;
        }
        case CS.Ext: {
          const c = buf[i++]!;
          if (c === 0x0d) this.#state = CS.SizeLf;
          else if (c === 0x0a || ++this.#line > 4096) throw new Error('malformed chunk extension');
          break;
        }
        case CS.SizeLf: {
          if (buf[i++] !== 0x0a) throw new Error('malformed chunk line');
          if (this.#size === 0) {
            this.#state = CS.TrailerStart;
          } else {
            this.#remaining = this.#size;
            this.#state = CS.Data;
          }
          this.#size = 0;
          this.#digits = 0;
          break;
        }
        case CS.DataCr:
          if (buf[i++] !== 0x0d) throw new Error('missing CRLF after chunk');
          this.#state = CS.DataLf;
          break;
        case CS.DataLf:
          if (buf[i++] !== 0x0a) throw new Error('missing CRLF after chunk');
          this.#state = CS.Size;
          break;
        case CS.TrailerStart: {
          const c = buf[i++]!;
          if (c === 0x0d) this.#state = CS.EndLf;
          else {
            this.#state = CS.Trailer;
            this.#line = 1;
          }
          break;
        }
        case CS.Trailer: {
          const c = buf[i++]!;
          if (c === 0x0d) this.#state = CS.TrailerLf;
          else if (++this.#line > 8192) throw new Error('trailer too large');
          break;
        }
        case CS.TrailerLf:
          if (buf[i++] !== 0x0a) throw new Error('malformed trailer');
          this.#state = CS.TrailerStart;
          break;
        case CS.EndLf:
          if (buf[i++] !== 0x0a) throw new Error('malformed chunked terminator');
          this.#state = CS.Done;
          return i;
        case CS.Done:
          return i;
      }
    }
    return -1;
  }
}

export class BodyError extends Error {}

// A head and the first body bytes go out in one write: copied together up to this size, corked above.
const JOIN_COPY_MAX = 16 * 1024;

/** Write `head` and `chunk` with one syscall. */
function writeJoined(dst: Socket, head: Buffer, chunk: Buffer): SendResult {
  if (chunk.length === 0) return send(dst, head);
  // Usually both are views of the one chunk the head was read from: write it as is.
  if (head.buffer === chunk.buffer && head.byteOffset + head.length === chunk.byteOffset) {
    return send(dst, Buffer.from(head.buffer, head.byteOffset, head.length + chunk.length));
  }
  if (chunk.length <= JOIN_COPY_MAX) return send(dst, Buffer.concat([head, chunk], head.length + chunk.length));
  dst.cork();
  dst.write(head);
  const ok = dst.write(chunk);
  dst.uncork();
  return ok ? HELD : FULL;
}

import { isAscii } from 'node:buffer';

/**
 * Splits a byte stream into parsed NDJSON values. Lines may be split across
 * chunks, and a multi-byte UTF-8 character across two chunks: lines are cut
 * on bytes and each complete line is decoded on its own. Blank lines are
 * skipped.
 *
 * Exec output lines (`{"type":"stdout","data":"<base64>","offset":N}`, the
 * gateway's exact spelling) skip the general JSON parser: base64 needs no
 * unescaping, so the data is sliced out of the line's bytes. Anything that
 * does not match that spelling byte for byte goes through `JSON.parse`.
 */
export async function* parseNdjson<T = unknown>(chunks: AsyncIterable<Uint8Array | string>): AsyncGenerator<T> {
  for await (const line of splitLineBuffers(chunks)) {
    const fast = parseOutputLine(line);
    if (fast) {
      yield fast as T;
      continue;
    }
    const text = line.toString('utf8');
    if (text.trim()) yield JSON.parse(text) as T;
  }
}

/** Splits a byte stream into text lines (without the newline); a last unterminated line is yielded too. */
export async function* splitLines(chunks: AsyncIterable<Uint8Array | string>): AsyncGenerator<string> {
  for await (const line of splitLineBuffers(chunks)) yield line.toString('utf8');
}

/**
 * Splits a byte stream into lines (without `\n`, and without a `\r` before
 * it); a last unterminated line is yielded too. A line inside one chunk is a
 * view of that chunk, not a copy.
 */
export async function* splitLineBuffers(chunks: AsyncIterable<Uint8Array | string>): AsyncGenerator<Buffer> {
  let partial: Buffer[] = [];
  for await (const chunk of chunks) {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    let start = 0;
    let nl: number;
    while ((nl = buf.indexOf(NL, start)) >= 0) {
      let line = buf.subarray(start, nl);
      if (partial.length > 0) {
        partial.push(line);
        line = Buffer.concat(partial);
        partial = [];
      }
      yield trimCr(line);
      start = nl + 1;
    }
    if (start < buf.length) partial.push(buf.subarray(start));
  }
  if (partial.length > 0) yield trimCr(Buffer.concat(partial));
}

const NL = 0x0a;
const CR = 0x0d;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;

function trimCr(line: Buffer): Buffer {
  return line.length > 0 && line[line.length - 1] === CR ? line.subarray(0, line.length - 1) : line;
}

const STDOUT_HEAD = Buffer.from('{"type":"stdout","data":"');
const STDERR_HEAD = Buffer.from('{"type":"stderr","data":"');
const OFFSET_TAIL = /^","offset":(0|[1-9][0-9]{0,15})}$/;

interface OutputLine {
  type: 'stdout' | 'stderr';
  data: string;
  offset: number;
}

/** An exec output line in the gateway's exact spelling, without JSON.parse; null for anything else. */
function parseOutputLine(line: Buffer): OutputLine | null {
  const h = STDOUT_HEAD.length;
  if (line.length < h + 14) return null;
  const type = line.compare(STDOUT_HEAD, 0, h, 0, h) === 0 ? 'stdout' : line.compare(STDERR_HEAD, 0, h, 0, h) === 0 ? 'stderr' : null;
  if (!type) return null;
  const q = line.indexOf(QUOTE, h);
  if (q < 0 || line.length - q > 32) return null;
  const tail = OFFSET_TAIL.exec(line.toString('latin1', q));
  if (!tail) return null;
  // Base64 is ASCII without escapes; anything else takes JSON.parse's exact decoding.
  const data = line.subarray(h, q);
  if (!isAscii(data) || data.indexOf(BACKSLASH) >= 0) return null;
  return { type, data: line.toString('latin1', h, q), offset: Number(tail[1]) };
}

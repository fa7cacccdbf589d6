/**
 * Splits a byte stream into parsed NDJSON values. Lines may be split across
 * chunks, and a multi-byte UTF-8 character across two chunks: the decoder is
 * streaming and only complete lines are parsed. Blank lines are skipped.
 */
export async function* parseNdjson<T = unknown>(chunks: AsyncIterable<Uint8Array | string>): AsyncGenerator<T> {
  for await (const line of splitLines(chunks)) {
    if (line.trim()) yield JSON.parse(line) as T;
  }
}

/** Splits a byte stream into text lines (without the newline); a last unterminated line is yielded too. */
export async function* splitLines(chunks: AsyncIterable<Uint8Array | string>): AsyncGenerator<string> {
  const decoder = new TextDecoder('utf-8');
  let buffered = '';
  for await (const chunk of chunks) {
    buffered += typeof chunk === 'string' ? chunk : decoder.decode(chunk, { stream: true });
    let start = 0;
    let nl: number;
    while ((nl = buffered.indexOf('\n', start)) >= 0) {
      yield buffered.slice(start, nl).replace(/\r$/, '');
      start = nl + 1;
    }
    buffered = buffered.slice(start);
  }
  buffered += decoder.decode();
  if (buffered) yield buffered.replace(/\r$/, '');
}

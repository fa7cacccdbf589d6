import type { Readable } from 'node:stream';

/**
 * Reads `s` slowly: every `every`-th chunk pauses it for `pauseMs`, so the
 * writer on the other side hits backpressure. Each chunk goes to `onChunk`.
 */
export function readSlowly(s: Readable, onChunk: (c: Buffer) => void, every = 16, pauseMs = 2): void {
  let n = 0;
  s.on('data', (c: Buffer) => {
    onChunk(c);
    if (++n % every === 0) {
      s.pause();
      setTimeout(() => s.resume(), pauseMs);
    }
  });
}

/** Everything `s` yields until its end, read slowly (see readSlowly). */
export function slowCollect(s: Readable, every = 16, pauseMs = 2): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    readSlowly(s, (c) => parts.push(c), every, pauseMs);
    s.on('end', () => resolve(Buffer.concat(parts)));
    s.on('error', reject);
  });
}

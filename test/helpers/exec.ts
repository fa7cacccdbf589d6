import type { ExecEvent } from '../../src/schemas/sandbox.js';

export interface ExecOutcome {
  events: ExecEvent[];
  stdout: Buffer;
  stderr: Buffer;
  last: ExecEvent | undefined;
}

/** Runs `POST /v1/sandboxes/:name/exec` and reads the NDJSON stream to its end. */
export async function execStream(
  base: string,
  name: string,
  body: Record<string, unknown>,
  opts: { signal?: AbortSignal; onEvent?: (e: ExecEvent) => void } = {},
): Promise<ExecOutcome> {
  const res = await fetch(`${base}/v1/sandboxes/${name}/exec`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: opts.signal,
  });
  if (res.status !== 200) throw new Error(`exec answered ${res.status}: ${await res.text()}`);
  const events: ExecEvent[] = [];
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  for await (const event of ndjson<ExecEvent>(res.body as unknown as AsyncIterable<Uint8Array>)) {
    events.push(event);
    if (event.type === 'stdout') out.push(Buffer.from(event.data, 'base64'));
    if (event.type === 'stderr') err.push(Buffer.from(event.data, 'base64'));
    opts.onEvent?.(event);
  }
  return { events, stdout: Buffer.concat(out), stderr: Buffer.concat(err), last: events.at(-1) };
}

/** Parses an NDJSON byte stream into objects, one per line (lines may span chunks). */
export async function* ndjson<T>(body: AsyncIterable<Uint8Array>): AsyncGenerator<T> {
  let buffer = '';
  for await (const chunk of body) {
    buffer += Buffer.from(chunk).toString();
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      yield JSON.parse(line) as T;
    }
  }
}

/**
 * Resolves true once none of `pids` runs in the sandbox any more (checked from
 * inside it: a confined sandbox's pids are its own namespace's), false after
 * `timeoutMs`. A zombie counts as gone.
 */
export async function goneInSandbox(base: string, name: string, pids: number[], timeoutMs = 5000): Promise<boolean> {
  const script = 'for p in "$@"; do [ -e /proc/$p ] && ! grep -q "^State:.*Z" /proc/$p/status 2>/dev/null && echo $p; done; true';
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await fetch(`${base}/v1/sandboxes/${name}/exec`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify({ command: ['sh', '-c', script, 'sh', ...pids.map(String)] }),
    });
    const body = (await res.json()) as { stdout?: string };
    if (res.status === 200 && body.stdout?.trim() === '') return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
}

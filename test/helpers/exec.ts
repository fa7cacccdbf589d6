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
  let buffer = '';
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buffer += Buffer.from(chunk).toString();
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const event = JSON.parse(buffer.slice(0, nl)) as ExecEvent;
      buffer = buffer.slice(nl + 1);
      events.push(event);
      if (event.type === 'stdout') out.push(Buffer.from(event.data, 'base64'));
      if (event.type === 'stderr') err.push(Buffer.from(event.data, 'base64'));
      opts.onEvent?.(event);
    }
  }
  return { events, stdout: Buffer.concat(out), stderr: Buffer.concat(err), last: events.at(-1) };
}

import t from 'tap';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { createSupervisorLogger, LogRing } from '../../src/supervisor/log.js';
import type { LogLine } from '../../src/protocol/control.js';
import { SandboxLogs } from '../../src/sandboxes/logs.js';
import { seededRandom } from '../helpers/random.js';
import { JsonText, type JsonBytes } from '../../src/log.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

type Line = Record<string, unknown>;

interface Capture {
  writes: string[];
  /** Resolves at the next write. */
  written: () => Promise<void>;
  lines: () => Line[];
  sunk: Line[];
  log: ReturnType<typeof createSupervisorLogger>;
}

function capture(): Capture {
  const writes: string[] = [];
  const sunk: Line[] = [];
  let onWrite: (() => void) | undefined;
  const written = (): Promise<void> => new Promise((resolve) => (onWrite = resolve));
  const log = createSupervisorLogger({
    bindings: { sandboxId: 'sb-1' },
    write: (bytes) => {
      writes.push(bytes.toString());
      onWrite?.();
    },
    sink: (bytes, start, end, level) => {
      const line = JSON.parse(bytes.toString('utf8', start, end)) as Line;
      if (line.level !== level) throw new Error(`sink got level ${level} for a line of level ${String(line.level)}`);
      sunk.push(line);
    },
  });
  const lines = (): Line[] =>
    writes
      .join('')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Line);
  return { writes, written, lines, sunk, log };
}

/** What the gateway keeps of lines a supervisor sent. */
function gatewayCopy(lines: unknown[]): LogLine[] {
  const logs = new SandboxLogs();
  logs.append('sb', lines);
  return logs.get('sb');
}

t.test('a line holds level, time, the bindings, the fields and the message; the gateway gets the same line', async (t) => {
  const { written, lines, sunk, log } = capture();
  const decision = { action: 'allow', host: 'api.example.test', port: 443, reason: 'r "quoted"\n' };
  const flushed = written();
  log.child({ component: 'egress' }).info({ decision }, 'egress decision');
  log.warn({ n: 1 });
  await flushed;
  const [a, b] = lines();
  t.match(a, { level: 30, time: /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, sandboxId: 'sb-1', component: 'egress', decision, msg: 'egress decision' });
  t.same(Object.keys(a!), ['level', 'time', 'sandboxId', 'component', 'decision', 'msg'], 'pino order: level, time, bindings, fields, msg');
  t.same(b, { level: 40, time: b!.time, sandboxId: 'sb-1', n: 1 }, 'no msg key without a message');
  t.same(sunk, [a, b], 'the sink gets the bytes of the same lines');
  const [ga, gb] = gatewayCopy(sunk);
  t.same(ga, { time: a!.time, level: 'info', source: 'egress', message: 'egress decision', fields: { sandboxId: 'sb-1', component: 'egress', decision } });
  t.same(gb, { time: b!.time, level: 'warn', source: 'supervisor', message: '', fields: { sandboxId: 'sb-1', n: 1 } });
  t.same(Object.keys(ga!), ['time', 'level', 'source', 'message', 'fields'], 'the gateway keeps the LogLine shape, in order');
  t.same(Object.keys(ga!.fields!), ['sandboxId', 'component', 'decision']);
});

/** Keeps `line` the logger's way: its UTF-8 bytes, inside a larger buffer. */
function push(ring: LogRing, line: string): void {
  const bytes = Buffer.from(`<<${line}>>`);
  ring.pushBytes(bytes, 2, bytes.length - 2);
}

/** The ring's lines, oldest first, read back from `joined` (no test line holds a comma). */
function held(ring: LogRing): string[] {
  const text = LogRing.joined([ring], '<', '>').toString();
  return text === '<>' ? [] : text.slice(1, -1).split(',');
}

t.test('the gateway gets the newest lines, oldest first, at most the ring size, joined into its message', async (t) => {
  const ring = new LogRing(3);
  t.same(held(ring), []);
  push(ring, 'a');
  push(ring, 'b');
  t.same(held(ring), ['a', 'b']);
  for (const l of ['c', 'd', 'e']) push(ring, l);
  t.equal(ring.size, 3);
  t.same(held(ring), ['c', 'd', 'e'], 'older lines overwritten');
  push(ring, 'f');
  t.same(held(ring), ['d', 'e', 'f']);
  ring.clear();
  t.equal(ring.size, 0);
  push(ring, '{"n":"é"}');
  push(ring, '{"n":2}');
  t.same(JSON.parse(LogRing.joined([ring], '{"lines":[', ']}').toString()), { lines: [{ n: 'é' }, { n: 2 }] }, 'a JSON array of the lines');
  const other = new LogRing(2);
  t.equal(LogRing.joined([other, ring, other], '[', ']').toString(), '[{"n":"é"},{"n":2}]', 'empty rings add no comma');
  push(other, '{"w":1}');
  t.same(JSON.parse(LogRing.joined([other, ring], '[', ']').toString()), [{ w: 1 }, { n: 'é' }, { n: 2 }], 'ring by ring');
});

t.test('the ring of lines agrees with a plain list model under random lines, sizes and wraps', async (t) => {
  const rnd = seededRandom(99);
  let mismatches = 0;
  for (let round = 0; round < 200; round++) {
    const maxLines = 1 + rnd(20);
    const maxBytes = 8 + rnd(300);
    const ring = new LogRing(maxLines, maxBytes);
    let model: string[] = [];
    for (let i = 0; i < 300; i++) {
      if (rnd(50) === 0) {
        ring.clear();
        model = [];
        continue;
      }
      const line = `${i}:` + 'é'.repeat(rnd(3)) + 'x'.repeat(rnd(maxBytes));
      push(ring, line);
      const n = Buffer.byteLength(line);
      if (n <= maxBytes) {
        model.push(line);
        // The model keeps the newest lines that fit both limits (the ring may keep fewer: it never splits a line across its end).
        while (model.length > maxLines || model.reduce((a, l) => a + Buffer.byteLength(l), 0) > maxBytes) model.shift();
      }
      const got = held(ring);
      const newestFirstOk = got.every((l, k) => l === model[model.length - got.length + k]);
      const newestKept = n > maxBytes || got.at(-1) === line;
      // What fits in half the ring is always all there (the room lost at a wrap is less than one line).
      const allKept = model.reduce((a, l) => a + Buffer.byteLength(l), 0) * 2 > maxBytes || got.length === model.length;
      if ((!newestFirstOk || !newestKept || !allKept || got.length > model.length) && mismatches++ < 3) t.fail(`round ${round} line ${i}`, { got, model });
    }
  }
  t.equal(mismatches, 0, 'the newest lines, in order, never a corrupted one');
});

t.test('secrets are redacted in bindings and fields; errors keep type and message; a field named like a binding is written once', async (t) => {
  const { written, lines, sunk, log } = capture();
  const child = log.child({ token: 'sekret-binding' });
  const flushed = written();
  child.info({ authorization: 'Bearer abc', password: 'p', err: new TypeError('boom') }, 'm');
  child.info({ sandboxId: 'other', level: 'x' }, 'clash');
  await flushed;
  const [a, b] = lines();
  t.match(a, { token: '[Redacted]', authorization: '[Redacted]', password: '[Redacted]', err: { type: 'TypeError', message: 'boom' } });
  t.notMatch(JSON.stringify(lines()), /sekret|Bearer/, 'no secret in any line');
  t.notMatch(JSON.stringify(sunk), /sekret|Bearer/, 'nor in what goes to the gateway');
  t.equal(b!.sandboxId, 'other', 'written once, with the field\'s value');
  t.same(Object.keys(b!), ['level', 'time', 'sandboxId', 'token', '_level', 'msg']);
  t.equal(b!.level, 30, 'the line keeps its level');
  t.equal(b!._level, 'x', 'a field named like a line key gets a _ in front');
  t.match(gatewayCopy([b])[0], { level: 'info', message: 'clash', fields: { sandboxId: 'other', _level: 'x' } });
});

t.test('lines are UTF-8: multi-byte characters, a lone surrogate, and a line longer than the batch buffer keep their text and place', async (t) => {
  const { writes, written, lines, sunk, log } = capture();
  const odd = 'é€😀\ud800x';
  log.info({ odd }, odd);
  const long = '€'.repeat(30_000); // 90000 bytes: more than a batch holds
  log.info({ long }, 'long');
  const flushed = written();
  log.info({ after: 1 }, 'after');
  await flushed;
  const got = lines();
  t.same(
    got.map((l) => l.msg),
    [odd, 'long', 'after'],
    'in order',
  );
  t.equal(got[0]!.odd, odd);
  t.equal(got[1]!.long, long);
  t.same(sunk, got, 'the gateway gets the same lines');
  t.ok(writes.length >= 2, 'the long line went out on its own');
});

t.test('lines logged close together go out in one write, in order, soon after the first', async (t) => {
  const { writes, written, lines, log } = capture();
  const flushed = written();
  const start = Date.now();
  for (let i = 0; i < 100; i++) log.info({ i });
  t.equal(writes.length, 0, 'nothing written while lines come');
  await flushed;
  t.equal(writes.length, 1, 'one write for all of them');
  t.ok(Date.now() - start < 5000, 'written soon');
  t.same(
    lines().map((l) => l.i),
    Array.from({ length: 100 }, (_, i) => i),
  );
  const again = written();
  log.info({ i: 100 });
  await again;
  t.equal(writes.length, 2, 'a later line is written too');
});

t.test('a large burst is written as it fills, not held back', async (t) => {
  const { writes, written, lines, log } = capture();
  const big = 'x'.repeat(1000);
  for (let i = 0; i < 200; i++) log.info({ i, big });
  t.ok(writes.length >= 2, `written while the burst runs (${writes.length} writes)`);
  await written();
  t.equal(lines().length, 200);
});

t.test('a write that throws (the driver stopped reading) loses stdout lines, not the process', async (t) => {
  const sunk: string[] = [];
  let tried: () => void = () => undefined;
  const log = createSupervisorLogger({
    write: () => {
      tried();
      throw Object.assign(new Error('EPIPE'), { code: 'EPIPE' });
    },
    sink: (bytes, start, end) => sunk.push(bytes.toString('utf8', start, end)),
  });
  for (const msg of ['one', 'two']) {
    const attempt = new Promise<void>((resolve) => (tried = resolve));
    log.info({}, msg);
    await attempt;
  }
  t.equal(sunk.length, 2, 'the gateway still gets every line');
});

t.test('lines still buffered at exit are written: process.exit and an uncaught exception', async (t) => {
  const run = promisify(execFile);
  const mod = path.join(ROOT, 'dist/src/supervisor/log.js');
  const script = (end: string): string =>
    `import(${JSON.stringify(mod)}).then((m) => { const log = m.createSupervisorLogger({}); for (let i = 0; i < 3; i++) log.info({ i }, 'before exit'); ${end}; })`;
  const exited = await run(process.execPath, ['-e', script('process.exit(0)')], { timeout: 10_000 });
  t.equal(exited.stdout.trim().split('\n').length, 3, 'process.exit in the same turn');
  const crashed = await run(process.execPath, ['-e', script("throw new Error('crash')")], { timeout: 10_000 }).catch(
    (err: { stdout: string; code: number }) => err,
  );
  t.equal((crashed as { code: number }).code, 1);
  t.equal(crashed.stdout.trim().split('\n').length, 3, 'an uncaught exception in the same turn');
});

/** A logger whose written text and sink lines are kept raw, and a promise of all lines written so far. */
function rawCapture(): { log: ReturnType<typeof createSupervisorLogger>; sunk: string[]; text: () => string; flush: () => Promise<void> } {
  let text = '';
  const sunk: string[] = [];
  let onWrite: (() => void) | undefined;
  const log = createSupervisorLogger({
    bindings: { sandboxId: 'sb-1' },
    write: (bytes) => {
      text += bytes.toString();
      onWrite?.();
    },
    sink: (bytes, start, end) => sunk.push(bytes.toString('utf8', start, end)),
  });
  // A marker line, then wait until it is written: every line before it is out too.
  const flush = async (): Promise<void> => {
    const done = new Promise<void>((resolve) => (onWrite = () => text.endsWith('"msg":"marker"}\n') && resolve()));
    log.info({}, 'marker');
    await done;
  };
  return { log, sunk, text: () => text, flush };
}

const STRINGS = ['', 'a', '/x/y', '"', '\\', '\n', '\u0000', '\u001f', '\u007f', 'é', '€', '\u2028', '😀', '\ud800', '\udfff', 'plain text'];

function randomValue(rnd: (n: number) => number, depth = 0): unknown {
  switch (rnd(depth > 1 ? 7 : 9)) {
    case 0:
    case 1: {
      let s = '';
      for (let n = rnd(8); n > 0; n--) s += STRINGS[rnd(STRINGS.length)];
      return s;
    }
    case 2: // long: past the character-by-character copy, sometimes past what a batch has left
      return (rnd(2) ? 'x' : '€').repeat([129, 1000, 5000, 21_000][rnd(4)]!) + STRINGS[rnd(STRINGS.length)];
    case 3:
      return [0, -0, 1.5, -7, 1e21, NaN, Infinity, 2 ** 53][rnd(8)];
    case 4:
      return [true, false, null][rnd(3)];
    case 5:
      return rnd(2) ? undefined : () => 1; // left out, as JSON.stringify does
    case 6:
      return new Date(rnd(2 ** 31) * 1000);
    case 7:
      return { a: randomValue(rnd, depth + 1), 'b "c"': randomValue(rnd, depth + 1) };
    default:
      return [randomValue(rnd, depth + 1), randomValue(rnd, depth + 1)];
  }
}

t.test('a line built in place has the text JSON.stringify makes, for random fields and sizes, whatever is left of the batch', async (t) => {
  const { log, sunk, text, flush } = rawCapture();
  const rnd = seededRandom(9090);
  const keys = ['a', 'path', 'host', 'n', 'é', 'with "quote"', '0', 'decision'];
  const expected: string[] = [];
  for (let i = 0; i < 3000; i++) {
    const extra: Record<string, unknown> = {};
    for (let n = rnd(4); n > 0; n--) extra[keys[rnd(keys.length)]!] = randomValue(rnd);
    const msg = rnd(4) === 0 ? undefined : (randomValue(rnd) as string | undefined);
    const m = typeof msg === 'string' ? msg : undefined;
    log.info(extra, m);
    const members = JSON.stringify(extra).slice(1, -1);
    expected.push(`,"sandboxId":"sb-1"${members ? `,${members}` : ''}${m === undefined ? '' : `,"msg":${JSON.stringify(m)}`}}`);
  }
  await flush();
  const lines = text().split('\n').slice(0, -2); // the marker, and the empty string after the last newline
  t.equal(lines.length, expected.length, 'every line written');
  let bad = 0;
  for (let i = 0; i < lines.length; i++) {
    const want = `{"level":30,"time":"${(JSON.parse(lines[i]!) as { time: string }).time}"${expected[i]}`;
    if (lines[i] !== want && bad++ < 3) t.fail(`line ${i} differs`, { got: lines[i]!.slice(0, 300), want: want.slice(0, 300) });
    if (sunk[i] !== lines[i] && bad++ < 3) t.fail(`the gateway's copy of line ${i} differs`);
  }
  t.equal(bad, 0, 'each line, and the gateway copy, is JSON.stringify text, in order');
});

t.test('a field that throws while its line is built leaves nothing of that line behind', async (t) => {
  const { log, sunk, text, flush } = rawCapture();
  class Breaks extends JsonText {
    json(): string {
      return '"whole"';
    }
    override writeJson(out: JsonBytes): void {
      out.text('"half of it');
      throw new Error('breaks');
    }
  }
  log.info({ n: 1 }, 'before');
  t.throws(() => log.info({ n: 2, v: new Breaks() }, 'broken'), /breaks/, 'the caller gets the error');
  log.info({ n: 3 }, 'after');
  await flush();
  const lines = text().trim().split('\n');
  t.same(
    lines.map((l) => (JSON.parse(l) as { msg: string }).msg),
    ['before', 'after', 'marker'],
    'whole lines only',
  );
  t.same(sunk, lines, 'the gateway got the same lines');
});

t.test('a line logged while another is being built (from a field that logs) is written whole, after it', async (t) => {
  const { log, sunk, text, flush } = rawCapture();
  const loud = {
    toJSON(): string {
      log.warn({ inner: true }, 'logged from toJSON');
      return 'loud';
    },
  };
  log.info({ a: 1, loud, b: 'x' }, 'outer');
  await flush();
  const lines = text().trim().split('\n');
  t.same(
    lines.map((l) => JSON.parse(l) as Record<string, unknown>).map(({ time: _t, ...rest }) => rest),
    [
      { level: 30, sandboxId: 'sb-1', a: 1, loud: 'loud', b: 'x', msg: 'outer' },
      { level: 40, sandboxId: 'sb-1', inner: true, msg: 'logged from toJSON' },
      { level: 30, sandboxId: 'sb-1', msg: 'marker' },
    ],
  );
  t.same(sunk, lines, 'the gateway got the same lines');
});

t.test('a line too large for the batch, with a field that logs: each line once, the nested one after', async (t) => {
  const { log, sunk, text, flush } = rawCapture();
  let calls = 0;
  const loud = {
    toJSON(): string {
      calls++;
      log.warn({ inner: true }, 'logged from toJSON');
      return 'loud';
    },
  };
  const big = 'y'.repeat(70_000); // more than a batch holds: built in place, then written whole by the string path
  log.info({ a: 1, loud, big }, 'outer');
  log.info({ loud, big: big.slice(0, 30_000) }, 'fits once the batch is flushed');
  await flush();
  const lines = text().trim().split('\n');
  t.same(
    lines.map((l) => JSON.parse(l) as Record<string, unknown>).map(({ time: _t, big: b, ...rest }) => ({ ...rest, big: typeof b === 'string' ? b.length : b })),
    [
      { level: 30, sandboxId: 'sb-1', a: 1, loud: 'loud', msg: 'outer', big: 70_000 },
      { level: 40, sandboxId: 'sb-1', inner: true, msg: 'logged from toJSON', big: undefined },
      { level: 30, sandboxId: 'sb-1', loud: 'loud', msg: 'fits once the batch is flushed', big: 30_000 },
      { level: 40, sandboxId: 'sb-1', inner: true, msg: 'logged from toJSON', big: undefined },
      { level: 30, sandboxId: 'sb-1', msg: 'marker', big: undefined },
    ],
  );
  t.same(sunk, lines, 'the gateway got the same lines');
  t.ok(calls >= 2, 'toJSON ran for each line');
});

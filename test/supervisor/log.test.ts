import t from 'tap';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { setImmediate as turn } from 'node:timers/promises';
import { createSupervisorLogger, LogRing } from '../../src/supervisor/log.js';
import type { LogLine } from '../../src/protocol/control.js';
import { seededRandom } from '../helpers/random.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

function capture(): { writes: string[]; lines: () => Record<string, unknown>[]; sunk: LogLine[]; log: ReturnType<typeof createSupervisorLogger> } {
  const writes: string[] = [];
  const sunk: LogLine[] = [];
  const log = createSupervisorLogger({ bindings: { sandboxId: 'sb-1' }, write: (s) => writes.push(s), sink: (l) => sunk.push(JSON.parse(l) as LogLine) });
  const lines = (): Record<string, unknown>[] =>
    writes
      .join('')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  return { writes, lines, sunk, log };
}

t.test('a line holds level, time, the bindings, the fields and the message; the gateway gets the same fields', async (t) => {
  const { lines, sunk, log } = capture();
  const decision = { action: 'allow', host: 'api.example.test', port: 443, reason: 'r "quoted"\n' };
  log.child({ component: 'egress' }).info({ decision }, 'egress decision');
  log.warn({ n: 1 });
  await turn();
  const [a, b] = lines();
  t.match(a, { level: 30, time: /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, sandboxId: 'sb-1', component: 'egress', decision, msg: 'egress decision' });
  t.same(Object.keys(a!), ['level', 'time', 'sandboxId', 'component', 'decision', 'msg'], 'pino order: level, time, bindings, fields, msg');
  t.same(b, { level: 40, time: b!.time, sandboxId: 'sb-1', n: 1 }, 'no msg key without a message');
  t.match(sunk[0], { level: 'info', source: 'egress', message: 'egress decision', fields: { sandboxId: 'sb-1', component: 'egress', decision } });
  t.match(sunk[1], { level: 'warn', source: 'supervisor', message: '' });
  t.same(Object.keys(sunk[0]!), ['time', 'level', 'source', 'message', 'fields'], 'the LogLine shape, in order');
  t.same(Object.keys(sunk[0]!.fields!), ['sandboxId', 'component', 'decision']);
});

t.test('the gateway gets the newest lines, oldest first, at most the ring size', async (t) => {
  const ring = new LogRing(3);
  t.same(ring.lines(), []);
  ring.push('a');
  ring.push('b');
  t.same(ring.lines(), ['a', 'b']);
  for (const l of ['c', 'd', 'e']) ring.push(l);
  t.equal(ring.size, 3);
  t.same(ring.lines(), ['c', 'd', 'e'], 'older lines overwritten');
  ring.push('f');
  t.same(ring.lines(), ['d', 'e', 'f']);
  ring.clear();
  t.equal(ring.size, 0);
  ring.push('g');
  t.same(ring.lines(), ['g']);
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
      ring.push(line);
      const n = Buffer.byteLength(line);
      if (n <= maxBytes) {
        model.push(line);
        // The model keeps the newest lines that fit both limits (the ring may keep fewer: it never splits a line across its end).
        while (model.length > maxLines || model.reduce((a, l) => a + Buffer.byteLength(l), 0) > maxBytes) model.shift();
      }
      const got = ring.lines();
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
  const { lines, sunk, log } = capture();
  const child = log.child({ token: 'sekret-binding' });
  child.info({ authorization: 'Bearer abc', password: 'p', err: new TypeError('boom') }, 'm');
  child.info({ sandboxId: 'other', level: 'x' }, 'clash');
  await turn();
  const [a, b] = lines();
  t.match(a, { token: '[Redacted]', authorization: '[Redacted]', password: '[Redacted]', err: { type: 'TypeError', message: 'boom' } });
  t.notMatch(JSON.stringify(lines()), /sekret|Bearer/, 'no secret in any line');
  t.notMatch(JSON.stringify(sunk), /sekret|Bearer/, 'nor in what goes to the gateway');
  t.equal(b!.sandboxId, 'other');
  t.equal(b!.level, 'x', 'as {level, time, ...bindings, ...fields, msg} would');
});

t.test('lines logged in one event-loop turn go out in one write, in order', async (t) => {
  const { writes, lines, log } = capture();
  for (let i = 0; i < 100; i++) log.info({ i });
  t.equal(writes.length, 0, 'nothing written during the turn');
  await turn();
  t.equal(writes.length, 1, 'one write for the turn');
  t.same(lines().map((l) => l.i), Array.from({ length: 100 }, (_, i) => i));
  log.info({ i: 100 });
  await turn();
  t.equal(writes.length, 2, 'the next turn writes again');
});

t.test('a large burst is written as it fills, not held to the end of the turn', async (t) => {
  const { writes, lines, log } = capture();
  const big = 'x'.repeat(1000);
  for (let i = 0; i < 200; i++) log.info({ i, big });
  t.ok(writes.length >= 2, `written while the turn runs (${writes.length} writes)`);
  await turn();
  t.equal(lines().length, 200);
});

t.test('a write that throws (the driver stopped reading) loses stdout lines, not the process', async (t) => {
  const sunk: LogLine[] = [];
  const log = createSupervisorLogger({
    write: () => {
      throw Object.assign(new Error('EPIPE'), { code: 'EPIPE' });
    },
    sink: (l) => sunk.push(JSON.parse(l) as LogLine),
  });
  log.info({}, 'one');
  await turn();
  log.info({}, 'two');
  await turn();
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

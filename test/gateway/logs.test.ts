import t from 'tap';
import { SandboxLogs } from '../../src/sandboxes/logs.js';
import type { LogLine } from '../../src/protocol/control.js';

t.test('pino lines from a supervisor become LogLines: level names, egress source, message, the other keys as fields', async (t) => {
  const logs = new SandboxLogs();
  const seen: LogLine[] = [];
  const stop = logs.follow('sb', (line) => seen.push(line));
  t.teardown(stop);
  const decision = { action: 'deny', host: 'h', port: 1 };
  logs.append('sb', [
    { level: 30, time: 'T1', sandboxId: 'sb', component: 'egress', decision, msg: 'egress decision' },
    { level: 50, time: 'T2', sandboxId: 'sb', msg: 'boom' },
    { level: 40, time: 'T3' },
    { level: 20, time: 'T4', msg: 'detail', component: 'control' },
    { level: 35, time: 'T5', msg: 'between levels' },
  ]);
  const got = logs.get('sb');
  t.same(got, [
    { time: 'T1', level: 'info', source: 'egress', message: 'egress decision', fields: { sandboxId: 'sb', component: 'egress', decision } },
    { time: 'T2', level: 'error', source: 'supervisor', message: 'boom', fields: { sandboxId: 'sb' } },
    { time: 'T3', level: 'warn', source: 'supervisor', message: '' },
    { time: 'T4', level: 'debug', source: 'supervisor', message: 'detail', fields: { component: 'control' } },
    { time: 'T5', level: 'info', source: 'supervisor', message: 'between levels' },
  ]);
  t.same(seen, got, 'followers get the same lines');
});

t.test('a field named __proto__ stays a field and changes no prototype', async (t) => {
  const logs = new SandboxLogs();
  logs.append('sb', [JSON.parse('{"level":30,"time":"T","msg":"m","__proto__":{"polluted":1}}') as unknown]);
  const fields = logs.get('sb')[0]!.fields!;
  t.equal(Object.getPrototypeOf(fields), Object.prototype);
  t.equal(JSON.stringify(fields), '{"__proto__":{"polluted":1}}');
  t.equal(({} as Record<string, unknown>).polluted, undefined);
});

t.test('LogLines (what older supervisors send) are kept as they are', async (t) => {
  const logs = new SandboxLogs();
  const line: LogLine = { time: 'T', level: 'warn', source: 'egress', message: 'm', fields: { a: 1 } };
  logs.append('sb', [line, { time: 'T', level: 'loud', source: 'other', message: 7 }]);
  t.same(logs.get('sb'), [line, { time: 'T', level: 'info', source: 'supervisor', message: '' }], 'unknown values fall back');
});

t.test('lines come from inside the sandbox: junk is dropped, sizes are bounded', async (t) => {
  const logs = new SandboxLogs();
  logs.append('sb', 'not an array');
  logs.append('sb', [null, 3, 'text', { level: 30, time: 'x'.repeat(100), msg: 'y'.repeat(10_000) }]);
  const got = logs.get('sb');
  t.equal(got.length, 1, 'only the object is kept');
  t.equal(got[0]!.time.length, 40, 'time cut to 40 characters');
  t.equal(got[0]!.message.length, 8192, 'message cut to 8 KiB');
  logs.append(
    'sb',
    Array.from({ length: 3000 }, (_, i) => ({ level: 30, time: 'T', msg: String(i) })),
  );
  const kept = logs.get('sb');
  t.equal(kept.length, 2000, 'at most 2000 lines per sandbox');
  t.equal(kept[0]!.message, '500', 'a batch is cut at 2500 lines, and the oldest make room');
  t.equal(kept.at(-1)!.message, '2499');
});

t.test('warnings and errors (denied egress) outlast a flood of info lines; a batch is put in time order', async (t) => {
  const logs = new SandboxLogs();
  const time = (i: number): string => new Date(Date.UTC(2026, 0, 1) + i).toISOString();
  const info = (i: number) => ({ level: 30, time: time(i), msg: `info ${i}` });
  // As a supervisor sends a batch: its warnings first, then the rest.
  logs.append('sb', [{ level: 40, time: time(5), msg: 'denied' }, { level: 50, time: time(7), msg: 'broke' }, ...[4, 6, 8].map(info)]);
  t.same(
    logs.get('sb').map((l) => l.message),
    ['info 4', 'denied', 'info 6', 'broke', 'info 8'],
    'in time order',
  );
  for (let b = 0; b < 10; b++) logs.append('sb', Array.from({ length: 1000 }, (_, i) => info(10 + b * 1000 + i)));
  const got = logs.get('sb');
  t.equal(got.length, 2002, 'the newest 2000 lines, and the two warnings before them');
  t.same(
    got.slice(0, 3).map((l) => l.message),
    ['denied', 'broke', 'info 8010'],
  );
  t.equal(got.at(-1)!.message, 'info 10009');
  for (let i = 0; i < 600; i++) logs.append('sb', [{ level: 40, time: time(20_000 + i), msg: `w${i}` }]);
  const later = logs.get('sb');
  t.equal(later.length, 2000, 'warnings still in the ring are not repeated');
  t.equal(later[0]!.message, 'info 8610');
  t.equal(later.at(-1)!.message, 'w599');
  for (let b = 0; b < 3; b++) logs.append('sb', Array.from({ length: 1000 }, (_, i) => info(30_000 + b * 1000 + i)));
  const last = logs.get('sb');
  t.equal(last.length, 2500, 'the newest 500 warnings are kept');
  t.same(
    [last[0]!.message, last[499]!.message, last[500]!.message],
    ['w100', 'w599', 'info 31000'],
  );
});

import t from 'tap';
import { LinkedSet } from '../../src/egress/linked-set.js';
import { DeadlineSweep } from '../../src/egress/deadlines.js';

t.test('LinkedSet: add, delete (twice is harmless), size, forEach that deletes', async (t) => {
  const s = new LinkedSet<string>();
  const a = s.add('a');
  const b = s.add('b');
  const c = s.add('c');
  t.equal(s.size, 3);
  s.delete(b);
  s.delete(b);
  t.equal(s.size, 2);
  const seen: string[] = [];
  s.forEach((v, link) => {
    seen.push(v);
    if (v === 'c') s.delete(a); // deleting one not yet visited: skipped
    s.delete(link);
  });
  t.same(seen, ['c'], 'a was deleted before its turn');
  t.equal(s.size, 0);
  s.delete(c);
  t.equal(s.size, 0);
  const d = s.add('d');
  s.clear();
  t.equal(s.size, 0);
  s.delete(d);
  t.equal(s.size, 0);
});

t.test('DeadlineSweep: fires due deadlines once, never deleted ones', async (t) => {
  const sweep = new DeadlineSweep(5);
  // The sweep's timer is unref'd: keep the loop alive meanwhile, and bound the wait.
  const guard = setTimeout(() => t.fail('deadlines did not fire within 5 s'), 5000);
  t.teardown(() => {
    clearTimeout(guard);
    sweep.close();
  });
  const fired: string[] = [];
  let resolveLate!: () => void;
  const late = new Promise<void>((r) => (resolveLate = r));
  sweep.add(Date.now(), () => fired.push('now'));
  const gone = sweep.add(Date.now(), () => fired.push('deleted'));
  sweep.add(Date.now() + 30, () => {
    fired.push('later');
    resolveLate();
  });
  sweep.delete(gone);
  await late;
  t.same(fired, ['now', 'later']);
});

/**
 * `--cpu-prof` is not allowed in NODE_OPTIONS, so `bench/run.ts --cpu-prof`
 * preloads this into sandbox supervisors (`NODE_OPTIONS=--import …`): it
 * profiles the process with the inspector and writes the profile to
 * `$OPENSHELL_BENCH_PROF` when the process exits.
 */
import { Session } from 'node:inspector';
import { writeFileSync } from 'node:fs';

const out = process.env.OPENSHELL_BENCH_PROF;
if (out) {
  const session = new Session();
  session.connect();
  session.post('Profiler.enable');
  session.post('Profiler.start');
  const write = (): void => {
    // Same-thread inspector sessions answer synchronously, so this works in 'exit'.
    session.post('Profiler.stop', (err, res) => {
      if (!err) writeFileSync(out, JSON.stringify(res.profile));
    });
  };
  process.once('exit', write);
  process.once('SIGTERM', () => {
    write();
    process.exit(0);
  });
}

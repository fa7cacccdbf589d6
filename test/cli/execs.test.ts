import t from 'tap';
import type { ExecList } from '../../src/schemas/sandbox.js';
import { startGateway } from '../helpers/gateway.js';
import { cli } from './helpers.js';

t.setTimeout(120_000);

/** Runs `sandbox execs NAME -o json` until `accept` holds (bounded). */
async function execsUntil(env: NodeJS.ProcessEnv, accept: (l: ExecList) => boolean): Promise<ExecList> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const r = await cli(['sandbox', 'execs', 'cx', '-o', 'json'], { env });
    const list = JSON.parse(r.stdout) as ExecList;
    if (accept(list)) return list;
    if (Date.now() > deadline) throw new Error(`never matched: ${r.stdout}`);
    await new Promise((res) => setTimeout(res, 50));
  }
}

t.test('sandbox exec --detach, execs, attach, kill', async (t) => {
  const gw = await startGateway(t);
  const env = { OPENSHELL_GATEWAY: gw.url };
  t.equal((await cli(['sandbox', 'create', '--name', 'cx', '--timeout', '30'], { env })).code, 0);

  const detached = await cli(['sandbox', 'exec', '--detach', 'cx', '--', 'sh', '-c', 'echo one; sleep 0.5; echo two >&2; exit 4'], { env });
  t.equal(detached.code, 0, detached.stderr);
  const id = detached.stdout.trim();
  t.match(id, /^ex_[0-9a-f]+$/, 'prints the exec id');

  const table = await cli(['sandbox', 'execs', 'cx'], { env });
  t.equal(table.code, 0);
  t.match(table.stdout, /^EXEC ID\s+STATE\s+EXIT\s+AGE\s+COMMAND\n/);
  t.match(table.stdout, new RegExp(`${id}\\s+(running\\s+-|exited\\s+4)\\s+\\d+s\\s+sh -c 'echo one; sleep 0.5; echo two >&2; exit 4'`));

  const attached = await cli(['sandbox', 'attach', 'cx', id], { env });
  t.equal(attached.code, 4, 'attach exits with the exec’s code');
  t.equal(attached.stdout, 'one\n');
  t.equal(attached.stderr, 'two\n');
  const again = await cli(['sandbox', 'attach', 'cx', id], { env });
  t.equal(again.stdout, 'one\n', 'replays from the start every time');

  const sleeper = (await cli(['sandbox', 'exec', '-d', 'cx', '--', 'sleep', '60'], { env })).stdout.trim();
  const killed = await cli(['sandbox', 'kill', 'cx', sleeper], { env });
  t.equal(killed.code, 0, killed.stderr);
  const list = await execsUntil(env, (l) => l.execs.some((e) => e.execId === sleeper && e.state === 'exited'));
  t.match(list.execs.find((e) => e.execId === sleeper), { signal: 'SIGTERM', exitCode: null }, 'TERM by default');
  const rows = (await cli(['sandbox', 'execs', 'cx'], { env })).stdout;
  t.match(rows, new RegExp(`${sleeper}\\s+exited\\s+SIGTERM`));

  const gone = await cli(['sandbox', 'kill', 'cx', sleeper, 'KILL'], { env });
  t.equal(gone.code, 1);
  t.match(gone.stderr, /has exited \(CONFLICT\)/);
  const unknown = await cli(['sandbox', 'attach', 'cx', 'ex_nope'], { env });
  t.equal(unknown.code, 1);
  t.match(unknown.stderr, /exec "ex_nope" not found \(EXEC_NOT_FOUND\)/);
  const badSignal = await cli(['sandbox', 'kill', 'cx', sleeper, 'no such'], { env });
  t.equal(badSignal.code, 2, 'a usage error');

  const empty = await cli(['sandbox', 'create', '--name', 'cy', '--timeout', '30'], { env });
  t.equal(empty.code, 0);
  t.equal((await cli(['sandbox', 'execs', 'cy'], { env })).stdout, 'No execs.\n');
});

import { once } from 'node:events';
import { rm } from 'node:fs/promises';
import t from 'tap';
import { shmRoot } from '../../src/drivers/process.js';
import type { ExecEvent, Sandbox, SandboxList } from '../../src/schemas/sandbox.js';
import { execStream } from '../helpers/exec.js';
import { spawnGateway } from '../helpers/gateway-process.js';
import { api, tempDir } from '../helpers/gateway.js';
import { supervisorsOf } from '../helpers/sandbox.js';

t.test('SIGTERM with execs streaming: each stream ends with a terminal RELAY_LOST line, the gateway exits 0', async (t) => {
  const stateDir = tempDir(t);
  const gw = await spawnGateway(t, ['--port', '0', '--state-dir', stateDir]);
  const s = (await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'busy' })).body;
  t.teardown(async () => {
    // Supervisors outlive a gateway stopped by SIGTERM (by design); so do their spools on /dev/shm.
    for (const pid of supervisorsOf(s.id)) process.kill(-pid, 'SIGKILL');
    const shm = shmRoot(stateDir, 0);
    if (shm) await rm(shm, { recursive: true, force: true });
  });
  for (;;) {
    const { body } = await api<SandboxList>(gw.url, 'GET', '/v1/sandboxes');
    if (body.sandboxes[0]?.phase === 'Ready') break;
    await new Promise((r) => setTimeout(r, 50));
  }
  let running = 0;
  let allRunning!: () => void;
  const ready = new Promise<void>((r) => (allRunning = r));
  const streams = Array.from({ length: 3 }, () =>
    execStream(gw.url, 'busy', { command: ['sh', '-c', 'echo go; sleep 30'] }, {
      onEvent: (e: ExecEvent) => {
        if (e.type === 'stdout' && ++running === 3) allRunning();
      },
    }),
  );
  await ready;
  const exited = once(gw.child, 'exit');
  gw.child.kill('SIGTERM');
  const results = await Promise.all(streams);
  for (const r of results) {
    t.match(r.last, { type: 'error', code: 'RELAY_LOST', message: /gateway is shutting down/ }, 'a terminal line, not a cut stream');
    t.equal(r.events.filter((e) => e.type === 'exit' || e.type === 'error').length, 1, 'exactly one');
  }
  const [code] = (await exited) as [number | null];
  t.equal(code, 0, 'clean exit');
});

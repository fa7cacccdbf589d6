import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import t from 'tap';
import { ProcessDriver } from '../../src/drivers/process.js';
import { silentLogger } from '../../src/log.js';
import { tempDir, type Teardown } from '../helpers/gateway.js';

/** Pids of the unassigned warm supervisors a driver on `stateDir` keeps (their cwd is the state dir). */
function warmPids(stateDir: string): number[] {
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (!readFileSync(`/proc/${entry}/cmdline`, 'latin1').split('\0').includes('--warm')) continue;
      if (readlinkSync(`/proc/${entry}/cwd`) !== stateDir) continue;
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (!stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) found.push(Number(entry));
    } catch {
      // gone, or not ours
    }
  }
  return found;
}

async function until(what: string, check: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`not ${what} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** A driver with a pool of 2 and `n` sandboxes created back to back; the pool's state seen after each create. */
async function burst(t: Teardown, n: number, idlePoolMs: number) {
  const stateDir = tempDir(t);
  const driver = new ProcessDriver({ stateDir, log: silentLogger, warmPool: 2, minShmFreeBytes: Number.MAX_SAFE_INTEGER, idlePoolMs });
  const ids: string[] = [];
  t.teardown(async () => {
    await Promise.allSettled(ids.map((id) => driver.delete(id)));
    await driver.close();
  });
  await until('2 warm', () => driver.warmPool().loaded === 2);
  const seen: ReturnType<ProcessDriver['warmPool']>[] = [];
  for (let i = 0; i < n; i++) {
    const id = `sbx_burst${i}`;
    ids.push(id);
    // The endpoint is never reached: the pool is what is watched here.
    await driver.create({ id, name: `b${i}`, image: null, command: [], env: {}, token: 'x', endpoint: 'unix:/nonexistent.sock', resources: {} });
    seen.push(driver.warmPool());
  }
  return { driver, stateDir, seen };
}

t.test('a burst of creates grows the warm pool ahead of its demand, refilling several at a time', async (t) => {
  const { driver, seen } = await burst(t, 6, 600_000);
  const target = driver.warmPool().target;
  t.ok(target > 2, `the burst raised the pool's target past its base of 2 (to ${target})`);
  t.ok(Math.max(...seen.map((s) => s.loading)) >= 2, `replacements load in parallel (${seen.map((s) => s.loading).join(' ')})`);
  await until(`${target} loaded`, () => driver.warmPool().loaded >= target, 60_000);
  t.pass(`refilled past the base, to ${target} loaded supervisors, ahead of more creates`);
});

t.test('extra warm supervisors stop once demand has passed', async (t) => {
  const { driver, stateDir } = await burst(t, 4, 300);
  await until('back to the base', () => driver.warmPool().target === 2 && driver.warmPool().loaded + driver.warmPool().loading === 2, 30_000);
  await until('the extras gone', () => warmPids(stateDir).length <= 2, 10_000);
  t.pass('the pool is back to 2');
});

/**
 * Gateway memory per idle connected sandbox, measured inside the gateway
 * process after forced garbage collection (the `rss` section of run.ts reads
 * VmRSS from outside and cannot force a GC, so it swings with V8's heap).
 *
 *   node --expose-gc dist/bench/memory-gc.js [count]
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildApp } from '../src/app.js';
import { testConfig } from '../src/config.js';

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) {
  process.stderr.write('run with node --expose-gc\n');
  process.exit(2);
}
const count = Number(process.argv[2] ?? 100);
const rssKiB = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? 0);
const settle = async () => {
  await new Promise((r) => setTimeout(r, 2000));
  gc();
  gc();
};

const stateDir = mkdtempSync(join(tmpdir(), 'openshell-mem-'));
const app = await buildApp(testConfig({ stateDir, logLevel: 'silent' }));
await app.listen({ port: 0, host: '127.0.0.1' });
const gw = app.openshell;
const ready = (name: string) =>
  new Promise<void>((resolve) => {
    const off = gw.sandboxes.on('change', (r) => {
      if (r.name === name && r.phase === 'Ready') {
        off();
        resolve();
      }
    });
  });
try {
  // Warm the paths first, so module loading is not counted as per-sandbox memory.
  for (let i = 0; i < 3; i++) {
    const r = ready(`warm-${i}`);
    await gw.sandboxes.create({ name: `warm-${i}` });
    await r;
  }
  await settle();
  const before = { heap: process.memoryUsage().heapUsed, rss: rssKiB() };
  for (let i = 0; i < count; i += 10) {
    await Promise.all(
      Array.from({ length: Math.min(10, count - i) }, async (_, j) => {
        const r = ready(`idle-${i + j}`);
        await gw.sandboxes.create({ name: `idle-${i + j}` });
        await r;
      }),
    );
  }
  await settle();
  const heap = (process.memoryUsage().heapUsed - before.heap) / 1024 / count;
  const rss = (rssKiB() - before.rss) / count;
  console.table([{ sandboxes: count, 'heap KiB/sandbox': +heap.toFixed(1), 'RSS KiB/sandbox': +rss.toFixed(1), target: '≤ 100 KiB' }]);
} finally {
  await Promise.all((await gw.store.list()).map((r) => gw.driver.delete(r.id)));
  await app.close();
  rmSync(stateDir, { recursive: true, force: true });
}

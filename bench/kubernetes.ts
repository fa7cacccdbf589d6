/**
 * The Kubernetes driver against the local kube-apiserver (scripts/k8s-test-binaries.sh):
 *
 *   npm run build && node --expose-gc dist/bench/kubernetes.js [--sandboxes 50] [--watched 500]
 *
 * 1. `--sandboxes` creates at once through the gateway's REST API: time from POST to 201
 *    (the Pod and its Secret exist by then: two API round trips each).
 * 2. Gateway heap per watched Pod: `--watched` sandbox-labelled Pods made by an admin client,
 *    heap (after GC) before and once the driver's watch cache holds them all.
 * Prints one JSON object; numbers go to docs/kubernetes.md by hand.
 */
import { performance } from 'node:perf_hooks';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildApp } from '../src/app.js';
import { testConfig } from '../src/config.js';
import { KubernetesDriver, LABEL_ID, LABEL_MANAGED_BY, MANAGED_BY } from '../src/drivers/kubernetes.js';
import { gatewayIdentity, k8sSkipReason, makeNamespace, startKubeApiServer } from './k8s-apiserver.js';

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const SANDBOXES = arg('sandboxes', 50);
const WATCHED = arg('watched', 500);

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return Math.round(s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] * 10) / 10;
};
const gc = () => (globalThis as { gc?: () => void }).gc?.();
const heap = async () => {
  for (let i = 0; i < 3; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 50));
  }
  return process.memoryUsage();
};

async function main(): Promise<void> {
  const skip = k8sSkipReason();
  if (skip) {
    process.stderr.write(`bench/kubernetes: ${skip}\n`);
    process.exit(2);
  }
  if (!(globalThis as { gc?: unknown }).gc) process.stderr.write('bench/kubernetes: run with --expose-gc for steady heap numbers\n');
  const cleanups: (() => unknown)[] = [];
  const t = { teardown: (fn: () => unknown) => void cleanups.push(fn) };
  try {
    const started = performance.now();
    const k = await startKubeApiServer(t);
    const apiserverReadyMs = Math.round(performance.now() - started);
    const ns = 'bench';
    await makeNamespace(k, ns);
    const token = await gatewayIdentity(k, ns);
    const stateDir = mkdtempSync(join(tmpdir(), 'openshell-bench-k8s-'));
    t.teardown(() => rmSync(stateDir, { recursive: true, force: true }));
    const app = await buildApp(
      testConfig({
        stateDir,
        driver: 'kubernetes',
        kubeconfig: k.kubeconfigFile({ token, namespace: ns }),
        k8sNamespace: ns,
        supervisorImage: 'openshell:bench',
        defaultImage: 'debian:bench',
      }),
    );
    t.teardown(() => app.close());
    await app.listen({ host: '127.0.0.1', port: 0 });
    const url = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`;
    const driver = app.openshell.driver as KubernetesDriver;

    // 1. N creates at once.
    const t0 = performance.now();
    const latencies = await Promise.all(
      Array.from({ length: SANDBOXES }, async (_, i) => {
        const s = performance.now();
        const res = await fetch(`${url}/v1/sandboxes`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ name: `bench-${i}`, image: 'busybox:1.36', command: ['sleep', 'infinity'] }),
        });
        const body = (await res.json()) as { phase: string; conditions: { message: string }[] };
        if (res.status !== 201 || body.phase === 'Error') throw new Error(`create ${i}: ${res.status} ${JSON.stringify(body)}`);
        return performance.now() - s;
      }),
    );
    const wallMs = performance.now() - t0;
    const pods = await k.admin.listNamespacedPod({ namespace: ns, labelSelector: LABEL_ID });
    if (pods.items.length < SANDBOXES) throw new Error(`${pods.items.length} Pods, expected ${SANDBOXES}`);

    // 1b. One at a time, for the round-trip cost without queueing.
    const sequential: number[] = [];
    for (let i = 0; i < 10; i++) {
      const s = performance.now();
      const res = await fetch(`${url}/v1/sandboxes`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ name: `seq-${i}`, image: 'busybox:1.36' }),
      });
      await res.json();
      sequential.push(performance.now() - s);
    }
    const direct: number[] = [];
    for (let i = 0; i < 10; i++) {
      const s = performance.now();
      await k.admin.createNamespacedSecret({ namespace: ns, body: { metadata: { name: `probe-${i}` }, stringData: { a: 'b' } } });
      direct.push(performance.now() - s);
    }

    // 2. Heap per watched Pod.
    while (driver.watchedPods < SANDBOXES + 10) await new Promise((r) => setTimeout(r, 20));
    const before = await heap();
    const baseWatched = driver.watchedPods;
    const mk = async (i: number) =>
      k.admin.createNamespacedPod({
        namespace: ns,
        body: {
          metadata: { name: `watched-${i}`, labels: { [LABEL_ID]: `sbx_watched${i}`, [LABEL_MANAGED_BY]: MANAGED_BY } },
          spec: {
            restartPolicy: 'Never',
            containers: [{ name: 'sandbox', image: 'busybox:1.36', command: ['sleep', 'infinity'] }],
          },
        },
      });
    for (let i = 0; i < WATCHED; i += 25) await Promise.all(Array.from({ length: Math.min(25, WATCHED - i) }, (_, j) => mk(i + j)));
    const deadline = Date.now() + 60_000;
    while (driver.watchedPods < baseWatched + WATCHED && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const after = await heap();
    const perPodHeap = (after.heapUsed - before.heapUsed) / WATCHED;
    const perPodRss = (after.rss - before.rss) / WATCHED;

    const result = {
      apiserverReadyMs,
      createsAtOnce: SANDBOXES,
      createWallMs: Math.round(wallMs),
      createMs: { p50: pct(latencies, 50), p90: pct(latencies, 90), p99: pct(latencies, 99), max: pct(latencies, 100) },
      apiCallsPerCreate: 2,
      sequentialCreateMs: { p50: pct(sequential, 50), max: pct(sequential, 100) },
      oneApiWriteMs: { p50: pct(direct, 50), max: pct(direct, 100) },
      watched: driver.watchedPods,
      heapPerWatchedPodBytes: Math.round(perPodHeap),
      rssPerWatchedPodBytes: Math.round(perPodRss),
      heapUsedMiB: Math.round((after.heapUsed / 1048576) * 10) / 10,
      rssMiB: Math.round((after.rss / 1048576) * 10) / 10,
      watchStats: driver.stats,
    };
    process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  } finally {
    for (const fn of cleanups.reverse()) await Promise.resolve(fn()).catch(() => undefined);
  }
}

await main();

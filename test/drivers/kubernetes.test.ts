// The Kubernetes driver against a real kube-apiserver (etcd + kube-apiserver built from Go
// modules by scripts/k8s-test-binaries.sh), running under the ServiceAccount and Role of
// deploy/kubernetes. No kubelet runs here: the tests bind Pods and write pods/status the way
// a kubelet would (test/helpers/kube-apiserver.ts).
import t from 'tap';

import type { V1Pod } from '@kubernetes/client-node';
import pino from 'pino';
import { buildApp } from '../../src/app.js';
import { testConfig } from '../../src/config.js';
import { KubernetesDriver, podName, secretName, LABEL_ID, LABEL_NAME } from '../../src/drivers/kubernetes.js';
import type { BackendState, SandboxSpec } from '../../src/drivers/types.js';
import type { Sandbox } from '../../src/schemas/sandbox.js';
import { CONFINEMENT_CAPABILITIES } from '../../src/supervisor/isolation/capabilities.js';
import { SUPERVISOR_NODE_FLAGS } from '../../src/paths.js';
import { api, startGateway, tempDir, waitForPhase, type Teardown } from '../helpers/gateway.js';
import {
  FakeKubelet,
  containerStatus,
  gatewayIdentity,
  k8sSkipReason,
  makeNamespace,
  startKubeApiServer,
  type KubeApiServer,
} from '../helpers/kube-apiserver.js';
import { startTcpProxy } from '../helpers/tcp-proxy.js';

// Starting etcd and kube-apiserver alone takes 10–60 s on a loaded 2-core machine: more than .taprc's 180 s per file.
t.setTimeout(360_000);

const skip = k8sSkipReason();
if (skip) t.comment(`skipping the Kubernetes tests: ${skip}`);

const log = pino({ level: 'silent' });
const SUPERVISOR_IMAGE = 'registry.test/openshell:1.0';
const DEFAULT_IMAGE = 'debian:test';

interface Env {
  k: KubeApiServer;
  namespace: string;
  token: string;
  kubelet: FakeKubelet;
}

/** A namespace with the gateway's identity from deploy/kubernetes and a stand-in kubelet. */
async function env(t: Teardown, k: KubeApiServer, namespace: string): Promise<Env> {
  await makeNamespace(k, namespace);
  const token = await gatewayIdentity(k, namespace);
  const kubelet = new FakeKubelet(k, namespace, `node-${namespace}`);
  await kubelet.start(t);
  return { k, namespace, token, kubelet };
}

function gatewayOverrides(e: Env, extra: { server?: string; startTimeoutMs?: number } = {}) {
  return {
    driver: 'kubernetes' as const,
    kubeconfig: e.k.kubeconfigFile({ token: e.token, namespace: e.namespace, server: extra.server }),
    k8sNamespace: e.namespace,
    supervisorImage: SUPERVISOR_IMAGE,
    defaultImage: DEFAULT_IMAGE,
    ...(extra.startTimeoutMs ? { k8sStartTimeoutMs: extra.startTimeoutMs } : {}),
  };
}

async function createSandbox(url: string, body: Record<string, unknown>): Promise<Sandbox> {
  const res = await api<Sandbox>(url, 'POST', '/v1/sandboxes', body);
  if (res.status !== 201) throw new Error(`create: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}

function readPod(e: Env, s: { id: string }): Promise<V1Pod> {
  return e.k.admin.readNamespacedPod({ name: podName(s.id), namespace: e.namespace });
}

/** Resolves once `cond` holds, polling (API state the test cannot subscribe to); rejects after `ms`. */
async function until(what: string, cond: () => Promise<boolean> | boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`not ${what} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function gone(p: Promise<unknown>): Promise<boolean> {
  return p.then(
    () => false,
    (err: { code?: number }) => err.code === 404,
  );
}

t.test('kubernetes driver against a real kube-apiserver', { skip, timeout: 300_000 }, async (t) => {
  const k = await startKubeApiServer(t);
  const main = await env(t, k, 'openshell');

  t.test('create: a Pod and its Secret as designed, read back from the API server; delete removes both', async (t) => {
    const gw = await startGateway(t, gatewayOverrides(main));
    const created = await createSandbox(gw.url, {
      name: 'spec-check',
      image: 'busybox:1.36',
      command: ['sleep', 'infinity'],
      env: { FOO: 'bar', OPENSHELL_ENDPOINT: 'http://evil' },
      resources: { cpus: 0.5, memoryMb: 256, diskMb: 1024 },
    });
    t.equal(created.phase, 'Provisioning');
    t.equal(created.driver, 'kubernetes');
    const pod = await readPod(main, created);
    const md = pod.metadata!;
    t.equal(md.name, podName(created.id));
    t.match(md.labels, { [LABEL_ID]: created.id, [LABEL_NAME]: 'spec-check', 'app.kubernetes.io/managed-by': 'openshell' });
    const spec = pod.spec!;
    t.equal(spec.restartPolicy, 'Never');
    t.equal(spec.automountServiceAccountToken, false);
    t.equal(spec.enableServiceLinks, false);

    // The init container copies the bundle from the supervisor image into the emptyDir.
    t.equal(spec.initContainers?.length, 1);
    const init = spec.initContainers![0];
    t.equal(init.image, SUPERVISOR_IMAGE, 'the init container runs --supervisor-image');
    t.same(init.command!.slice(0, 4), [
      '/opt/openshell/lib/ld-linux-x86-64.so.2',
      '--library-path',
      '/opt/openshell/lib',
      '/opt/openshell/bin/node',
    ]);
    t.match(init.command![5], /cpSync\("\/opt\/openshell", "\/openshell-bundle"/);
    t.same(init.volumeMounts, [{ name: 'openshell-bundle', mountPath: '/openshell-bundle' }]);
    t.same(init.securityContext?.capabilities, { drop: ['ALL'] });
    const bundleVol = spec.volumes!.find((v) => v.name === 'openshell-bundle');
    t.ok(bundleVol?.emptyDir, 'the bundle volume is an emptyDir');

    // The workload: the bundle is the entrypoint, the command follows `--`.
    t.equal(spec.containers.length, 1);
    const c = spec.containers[0];
    t.equal(c.name, 'sandbox');
    t.equal(c.image, 'busybox:1.36');
    t.same(c.command, [
      '/opt/openshell/lib/ld-linux-x86-64.so.2',
      '--library-path',
      '/opt/openshell/lib',
      '/opt/openshell/bin/node',
      ...SUPERVISOR_NODE_FLAGS,
      '/opt/openshell/supervisor/main.mjs',
      '--',
    ], 'the bundle is the entrypoint, as the docker driver starts it');
    t.same(c.args, ['sleep', 'infinity']);
    const envOf = Object.fromEntries((c.env ?? []).map((x) => [x.name, x.value]));
    t.same(envOf, {
      FOO: 'bar',
      OPENSHELL_SANDBOX_ID: created.id,
      OPENSHELL_ENDPOINT: gw.url,
      OPENSHELL_SANDBOX_TOKEN_FILE: '/run/openshell/token/token',
      OPENSHELL_BUNDLE_DIR: '/opt/openshell',
      OPENSHELL_ISOLATION: 'auto',
    }, 'the supervisor env; a user OPENSHELL_* variable cannot override it');
    t.same(
      c.volumeMounts?.map((m) => [m.name, m.mountPath, m.readOnly]),
      [
        ['openshell-bundle', '/opt/openshell', true],
        ['openshell-token', '/run/openshell/token', true],
      ],
    );
    const sc = c.securityContext!;
    t.same(sc.capabilities?.drop, ['ALL']);
    t.same(sc.capabilities?.add, [...CONFINEMENT_CAPABILITIES], 'exactly the confinement capabilities');
    t.equal(sc.privileged, false);
    t.same(sc.seccompProfile, { type: 'Unconfined' }, 'RuntimeDefault refuses pivot_root (bwrap)');
    t.same(init.securityContext?.seccompProfile, { type: 'RuntimeDefault' }, 'the init container keeps RuntimeDefault');
    t.same(sc.appArmorProfile, { type: 'Unconfined' });
    t.same(c.resources?.limits, { cpu: '500m', memory: '256Mi', 'ephemeral-storage': '1Gi' });
    t.same(c.resources?.requests, c.resources?.limits, 'requests = limits');
    t.equal(pod.status?.qosClass, 'Guaranteed', 'the API server computes QoS Guaranteed');

    // The token Secret: mounted read-only as a file, owned by the Pod.
    const tokenVol = spec.volumes!.find((v) => v.name === 'openshell-token')!;
    t.same(tokenVol.secret, {
      secretName: secretName(created.id),
      defaultMode: 0o400,
      items: [{ key: 'token', path: 'token' }],
    });
    const secret = await k.admin.readNamespacedSecret({ name: secretName(created.id), namespace: main.namespace });
    t.equal(secret.type, 'Opaque');
    t.equal(secret.immutable, true);
    t.match(Buffer.from(secret.data!.token, 'base64').toString(), /^.{20,}$/, 'a token is stored');
    t.same(secret.metadata?.ownerReferences?.map((o) => [o.apiVersion, o.kind, o.name, o.uid, o.controller]), [
      ['v1', 'Pod', md.name, md.uid, true],
    ]);
    t.match(secret.metadata?.labels, { [LABEL_ID]: created.id });

    // No image: --default-image.
    const dflt = await createSandbox(gw.url, { name: 'default-image' });
    const dpod = await readPod(main, dflt);
    t.equal(dpod.spec!.containers[0].image, DEFAULT_IMAGE);
    t.same(dpod.spec!.containers[0].args ?? [], [], 'no command: the supervisor runs no entrypoint');
    t.notOk(dpod.spec!.containers[0].resources?.limits, 'no resources: no limits');

    // Delete: Pod and Secret gone (a bound Pod goes once the kubelet has stopped it).
    await main.kubelet.bind(podName(created.id));
    const deleted = once(gw, 'deleted', created.name);
    const res = await api<Sandbox>(gw.url, 'DELETE', '/v1/sandboxes/spec-check');
    t.equal(res.status, 200);
    t.equal(res.body.phase, 'Deleting');
    await deleted;
    t.ok(await gone(readPod(main, created)), 'the Pod is gone');
    t.ok(await gone(k.admin.readNamespacedSecret({ name: secretName(created.id), namespace: main.namespace })), 'the Secret is gone');
    t.equal((await api(gw.url, 'GET', '/v1/sandboxes/spec-check')).status, 404);
  });

  t.test('phases from the status a kubelet writes', async (t) => {
    const gw = await startGateway(t, gatewayOverrides(main));
    const make = async (name: string) => {
      const s = await createSandbox(gw.url, { name, image: 'busybox:1.36', command: ['sleep', 'infinity'] });
      await main.kubelet.bind(podName(s.id));
      return s;
    };
    const [running, failed, oom, pull, evicted, vanished, barrier] = await Promise.all(
      ['running', 'failed', 'oom', 'pull', 'evicted', 'vanished', 'barrier'].map(make),
    );

    await main.kubelet.running(podName(running.id));
    await main.kubelet.setStatus(podName(failed.id), () => ({
      phase: 'Failed',
      containerStatuses: [containerStatus('sandbox', 'busybox:1.36', { terminated: { exitCode: 3, reason: 'Error' } })],
    }));
    await main.kubelet.setStatus(podName(oom.id), () => ({
      phase: 'Failed',
      containerStatuses: [containerStatus('sandbox', 'busybox:1.36', { terminated: { exitCode: 137, reason: 'OOMKilled' } })],
    }));
    await main.kubelet.setStatus(podName(pull.id), () => ({
      phase: 'Pending',
      containerStatuses: [
        containerStatus('sandbox', 'busybox:1.36', {
          waiting: { reason: 'ImagePullBackOff', message: 'Back-off pulling image "busybox:1.36"' },
        }),
      ],
    }));
    await main.kubelet.setStatus(podName(evicted.id), () => ({
      phase: 'Failed',
      reason: 'Evicted',
      message: 'The node was low on resource: memory.',
    }));
    await k.admin.deleteNamespacedPod({ name: podName(vanished.id), namespace: main.namespace, gracePeriodSeconds: 0 });

    const reason = async (s: Sandbox, re: RegExp) => {
      const got = await waitForPhase(gw.app, s.name, 'Error', 15_000);
      t.match(got.conditions[0], { type: 'Ready', status: 'False', reason: 'WorkloadFailed', message: re }, `${s.name}: ${got.conditions[0].message}`);
    };
    await reason(failed, /^Pod failed: Error \(exit code 3\)/);
    await reason(oom, /OOMKilled \(exit code 137\)/);
    await reason(pull, /^ImagePullBackOff: container sandbox: Back-off pulling image/);
    await reason(evicted, /^Pod failed: Evicted: The node was low on resource: memory\./);
    await reason(vanished, /deleted outside the gateway/);

    // The watch is one ordered stream: once a later event is seen, the Running one was too.
    await main.kubelet.setStatus(podName(barrier.id), () => ({ phase: 'Failed', reason: 'Barrier' }));
    await waitForPhase(gw.app, barrier.name, 'Error', 15_000);
    const r = (await api<Sandbox>(gw.url, 'GET', `/v1/sandboxes/${running.name}`)).body;
    t.equal(r.phase, 'Provisioning', 'Running: waiting for the supervisor');
    t.match(r.conditions[0], { reason: 'Provisioning', message: /waiting for the supervisor/ });
  });

  t.test('Pending past --k8s-start-timeout-ms (unschedulable) → Error with the scheduler reason', async (t) => {
    const e = await env(t, k, 'slow');
    const gw = await startGateway(t, gatewayOverrides(e, { startTimeoutMs: 1500 }));
    const started = Date.now();
    const s = await createSandbox(gw.url, { name: 'nowhere', image: 'busybox:1.36' });
    await e.kubelet.setStatus(podName(s.id), () => ({
      phase: 'Pending',
      conditions: [
        {
          type: 'PodScheduled',
          status: 'False',
          reason: 'Unschedulable',
          message: '0/1 nodes are available: 1 Insufficient memory.',
        },
      ],
    }));
    const got = await waitForPhase(gw.app, s.name, 'Error', 15_000);
    t.match(got.conditions[0].message, /^Pod still Pending after 2 s \(Unschedulable: 0\/1 nodes are available: 1 Insufficient memory\.\)/);
    // creationTimestamp has whole seconds: the Pod may be up to 1 s older than the create call.
    t.ok(Date.now() - started >= 500, `Error after the timeout (${Date.now() - started} ms)`);
  });

  t.test('the watch survives a reset stream, a silently dead one, and 410 Gone', async (t) => {
    const proxy = await startTcpProxy({ host: '127.0.0.1', port: k.port });
    t.teardown(() => proxy.close());
    const d = new KubernetesDriver({
      log,
      kubeConfig: k.kubeConfig({ token: main.token, namespace: main.namespace, server: `https://127.0.0.1:${proxy.port}` }),
      namespace: main.namespace,
      supervisorImage: SUPERVISOR_IMAGE,
      defaultImage: DEFAULT_IMAGE,
      watchTimeoutSeconds: 3,
      watchIdleGraceMs: 1000,
      requestTimeoutMs: 5000,
    });
    t.teardown(() => d.close());
    const states: BackendState[] = [];
    const waiters = new Set<() => void>();
    d.watch((s) => {
      states.push(s);
      for (const w of waiters) w();
    });
    const seen = (id: string, state: BackendState['state'], ms = 20_000) =>
      new Promise<BackendState>((resolve, reject) => {
        const check = () => {
          const s = states.find((x) => x.id === id && x.state === state);
          if (!s) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve(s);
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`${id} not ${state} after ${ms} ms: ${JSON.stringify(states)}`));
        }, ms);
        waiters.add(check);
        check();
      });
    const mk = async (n: number): Promise<SandboxSpec> => {
      const s: SandboxSpec = {
        id: `sbx_watch${n.toString(16).padStart(7, '0')}`,
        name: `watch-${n}`,
        image: 'busybox:1.36',
        command: [],
        env: {},
        token: `token-${n}`,
        endpoint: 'http://gateway.test:8080',
        resources: {},
      };
      await d.create(s);
      return s;
    };
    const fail = (s: SandboxSpec, why: string) =>
      main.kubelet.setStatus(podName(s.id), () => ({ phase: 'Failed', reason: why, message: why }));
    await until('watching', () => d.stats.watches > 0);

    // 1. A stream reset under the watch (RST): relist and watch again.
    const a = await mk(1);
    const watchesBefore = d.stats.watches;
    proxy.resetAll();
    await fail(a, 'AfterReset');
    t.match((await seen(a.id, 'Error')).message, /AfterReset/, 'a change made while the stream was down is seen');
    t.ok(d.stats.watches > watchesBefore, 'a new watch was opened');

    // 2. A stream that dies silently (no FIN, no RST: NAT state dropped): given up after its
    //    server timeout plus the idle grace, then watched again.
    const b = await mk(2);
    await until('the new watch streaming', () => proxy.connections > 0);
    const blackholedAt = Date.now();
    proxy.blackhole();
    proxy.restore(); // new connections work again; the old ones stay dead
    await fail(b, 'AfterBlackhole');
    t.match((await seen(b.id, 'Error', 30_000)).message, /AfterBlackhole/);
    t.ok(Date.now() - blackholedAt < 15_000, `seen in ${Date.now() - blackholedAt} ms (bounded by timeout + grace)`);

    // 3. 410 Gone: the watch ends (server timeout) while new connections are held; meanwhile a Pod
    //    changes and etcd is compacted past the driver's resourceVersion. The re-watch gets 410;
    //    the driver relists and sees the change.
    const c = await mk(3);
    await until('seen', () => states.some((x) => x.id === c.id) || d.watchedPods >= 3);
    const gone410 = d.stats.gone410;
    const lists = d.stats.lists;
    proxy.pauseNew(true);
    const watchesNow = d.stats.watches;
    await until('the watch ended and a new one was tried', () => d.stats.watches > watchesNow, 10_000);
    await fail(c, 'AfterCompaction');
    await main.kubelet.setStatus(podName(c.id), (p) => ({ ...p.status, message: 'AfterCompaction again' }));
    const rev = await k.compact();
    t.ok(rev > 0, `etcd compacted at revision ${rev}`);
    proxy.pauseNew(false);
    t.match((await seen(c.id, 'Error', 30_000)).message, /AfterCompaction/);
    t.ok(d.stats.gone410 > gone410, `410 Gone was answered (${d.stats.gone410 - gone410} times)`);
    t.ok(d.stats.lists > lists, 'and the driver relisted');
  });

  t.test('a gateway restart re-adopts its Pods; a Pod gone meanwhile is an Error', async (t) => {
    const stateDir = tempDir(t);
    const overrides = { ...gatewayOverrides(main), stateDir, db: `sqlite:${stateDir}/openshell.db` };
    const app1 = await buildApp(testConfig(overrides));
    let closed = false;
    t.teardown(() => (closed ? undefined : app1.close()));
    await app1.listen({ host: '127.0.0.1', port: 0 });
    const url1 = `http://127.0.0.1:${(app1.server.address() as { port: number }).port}`;
    const keep = await createSandbox(url1, { name: 'keep', image: 'busybox:1.36' });
    const lose = await createSandbox(url1, { name: 'lose', image: 'busybox:1.36' });
    for (const s of [keep, lose]) {
      await main.kubelet.bind(podName(s.id));
      await main.kubelet.running(podName(s.id));
    }
    await app1.close();
    closed = true;
    t.ok(await readPod(main, keep), 'closing the gateway leaves its Pods running');
    await k.admin.deleteNamespacedPod({ name: podName(lose.id), namespace: main.namespace });
    await until('the lost Pod gone', () => gone(readPod(main, lose)));

    const gw2 = await startGateway(t, overrides);
    const lost = await waitForPhase(gw2.app, 'lose', 'Error');
    t.match(lost.conditions[0], { reason: 'WorkloadLost' });
    const kept = (await api<Sandbox>(gw2.url, 'GET', '/v1/sandboxes/keep')).body;
    t.equal(kept.phase, 'Provisioning', 'the running Pod is adopted (waiting for its supervisor)');
    await main.kubelet.setStatus(podName(keep.id), () => ({ phase: 'Failed', reason: 'AfterRestart' }));
    const failed = await waitForPhase(gw2.app, 'keep', 'Error');
    t.match(failed.conditions[0].message, /AfterRestart/, 'the new gateway watches the adopted Pod');
  });

  t.test('bad input: the API server says no, and the sandbox is an Error with its words', async (t) => {
    const e = await env(t, k, 'limited');
    await k.admin.createNamespacedLimitRange({
      namespace: e.namespace,
      body: { metadata: { name: 'max' }, spec: { limits: [{ type: 'Container', max: { memory: '512Mi' } }] } },
    });
    const gw = await startGateway(t, gatewayOverrides(e));
    const spaced = await createSandbox(gw.url, { name: 'spaced', image: 'busybox:1.36 ' });
    t.equal(spaced.phase, 'Error');
    t.match(spaced.conditions[0], {
      reason: 'CreateFailed',
      message: /spec\.containers\[0\]\.image: Invalid value: "busybox:1\.36 ": must not have leading or trailing whitespace/,
    });
    const big = await createSandbox(gw.url, { name: 'big', image: 'busybox:1.36', resources: { memoryMb: 1024 } });
    t.equal(big.phase, 'Error');
    t.match(big.conditions[0].message, /maximum memory usage per Container is 512Mi, but limit is 1Gi/);
    const left = await k.admin.listNamespacedPod({ namespace: e.namespace });
    t.same(left.items, [], 'no Pod was made');
    const bad = await api<{ error: { code: string; message: string } }>(gw.url, 'POST', '/v1/sandboxes', {
      name: 'neg',
      resources: { cpus: -1 },
    });
    t.equal(bad.status, 400, 'resources the gateway can tell are wrong are a 400');
  });

  t.test('an unreachable API server: create is an Error in bounded time, the gateway keeps serving', async (t) => {
    const proxy = await startTcpProxy({ host: '127.0.0.1', port: k.port });
    t.teardown(() => proxy.close());
    const driver = new KubernetesDriver({
      log,
      kubeConfig: k.kubeConfig({ token: main.token, namespace: main.namespace, server: `https://127.0.0.1:${proxy.port}` }),
      namespace: main.namespace,
      supervisorImage: SUPERVISOR_IMAGE,
      defaultImage: DEFAULT_IMAGE,
      requestTimeoutMs: 2000,
    });
    const gw = await startGateway(t, { driver: 'kubernetes' }, { driver });
    proxy.blackhole();
    const started = Date.now();
    const s = await createSandbox(gw.url, { name: 'unreachable', image: 'busybox:1.36' });
    const took = Date.now() - started;
    t.equal(s.phase, 'Error');
    t.match(s.conditions[0], { reason: 'CreateFailed', message: /API server unreachable: no answer in time/ });
    t.ok(took < 6000, `answered in ${took} ms (request timeout 2000 ms)`);
    t.same((await api(gw.url, 'GET', '/healthz')).body, { status: 'ok' }, 'healthz still answers');
    t.equal((await api(gw.url, 'GET', '/v1/sandboxes')).status, 200, 'the API still answers');
    await proxy.close();
    const refused = await createSandbox(gw.url, { name: 'refused', image: 'busybox:1.36' });
    t.match(refused.conditions[0].message, /API server unreachable: .*ECONNREFUSED/, 'connection refused: at once');
  });
});

function once(gw: { app: { openshell: { sandboxes: { on(e: 'deleted', l: (r: { name: string }) => void): () => void } } } }, event: 'deleted', name: string): Promise<void> {
  return new Promise((resolve) => {
    const off = gw.app.openshell.sandboxes.on(event, (r) => {
      if (r.name !== name) return;
      off();
      resolve();
    });
  });
}


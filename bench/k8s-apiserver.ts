// A real kube-apiserver and etcd on loopback for the Kubernetes driver's tests and benchmark
// (tests import it via test/helpers/kube-apiserver.ts)
// (binaries from scripts/k8s-test-binaries.sh), and a stand-in kubelet: no kubelet runs
// here, so tests bind Pods to a Node object they create and write pods/status themselves.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request } from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CoreV1Api,
  KubeConfig,
  RbacAuthorizationV1Api,
  Watch,
  type V1ContainerStatus,
  type V1Pod,
  type V1PodStatus,
  type V1Role,
  type V1RoleBinding,
  type V1ServiceAccount,
} from '@kubernetes/client-node';
import { stringify } from 'yaml';
import { DEPLOY_DIR, findObject, renderKustomization } from './kustomize.js';

/** What owns cleanups (a tap test, or the benchmark's list). */
export interface Teardown {
  teardown(fn: () => unknown): void;
}

export const K8S_CACHE = process.env.OPENSHELL_K8S_CACHE ?? '/var/cache/openshell-test/k8s';
const BIN = join(K8S_CACHE, 'bin');

/** Why the Kubernetes tests cannot run here, or undefined when they can. */
export function k8sSkipReason(): string | undefined {
  for (const b of ['kube-apiserver', 'etcd']) {
    if (!existsSync(join(BIN, b))) {
      return `${join(BIN, b)} is missing: run bash scripts/k8s-test-binaries.sh (npm test's pretest does)`;
    }
  }
  if (!hasOpenssl()) return 'openssl is missing (it makes the service-account keys)';
  return undefined;
}

function hasOpenssl(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Static-token users: `admin` (system:masters) and `user-0`…`user-15` with no rights until a test binds them. */
export const TEST_USERS = Array.from({ length: 16 }, (_, i) => `user-${i}`);

export interface KubeApiServer {
  /** https://127.0.0.1:<port> */
  url: string;
  port: number;
  /** The serving certificate's CA bundle. */
  caFile: string;
  etcdUrl: string;
  dir: string;
  adminToken: string;
  tokenOf(user: string): string;
  /** A client config for `token` (admin by default), against `server` (default: the API server itself). */
  kubeConfig(opts?: { token?: string; server?: string; namespace?: string }): KubeConfig;
  /** The same as a kubeconfig file (for `--kubeconfig`). */
  kubeconfigFile(opts?: { token?: string; server?: string; namespace?: string }): string;
  admin: CoreV1Api;
  rbac: RbacAuthorizationV1Api;
  /** Compacts etcd at its current revision: older resourceVersions are gone (a watch from one gets 410). */
  compact(): Promise<number>;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

function spawnLogged(cmd: string, args: string[], logFile: string): ChildProcess {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const chunks: Buffer[] = [];
  let size = 0;
  const keep = (b: Buffer) => {
    chunks.push(b);
    size += b.length;
    while (size > 256 * 1024 && chunks.length > 1) size -= chunks.shift()!.length;
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  child.on('exit', () => {
    try {
      writeFileSync(logFile, Buffer.concat(chunks));
    } catch {
      // the dir may be gone
    }
  });
  (child as ChildProcess & { tail?: () => string }).tail = () => Buffer.concat(chunks).toString('utf8').slice(-4000);
  return child;
}

function tail(child: ChildProcess): string {
  return (child as ChildProcess & { tail?: () => string }).tail?.() ?? '';
}

async function stopChild(child: ChildProcess, ms = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), ms);
  await exited;
  clearTimeout(timer);
}

function get(url: string, token: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers: { authorization: `Bearer ${token}` }, rejectUnauthorized: false, agent: false, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

/**
 * One HTTP request on its own connection (no keep-alive pool): a pooled socket to etcd,
 * left when etcd stops, kept Node's exit spinning in its handle cleanup.
 */
function httpCall(url: string, method: string, body?: unknown): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method, agent: false, headers: { connection: 'close' }, timeout: 10_000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

async function etcdPost(etcdUrl: string, path: string, body: unknown): Promise<Record<string, unknown>> {
  const res = await httpCall(`${etcdUrl}${path}`, 'POST', body);
  if (res.status !== 200) throw new Error(`etcd ${path}: ${res.status} ${res.body}`);
  return JSON.parse(res.body) as Record<string, unknown>;
}

/**
 * Starts etcd and kube-apiserver on loopback ports (RBAC, static tokens,
 * service-account keys from openssl, watch cache off for Pods so that a
 * compacted resourceVersion answers 410), waits for /readyz, and stops both
 * at teardown.
 */
export async function startKubeApiServer(t: Teardown, opts: { readyTimeoutMs?: number } = {}): Promise<KubeApiServer> {
  const dir = mkdtempSync(join(tmpdir(), 'openshell-k8s-'));
  const children: ChildProcess[] = [];
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    for (const c of children.reverse()) await stopChild(c);
    rmSync(dir, { recursive: true, force: true });
  };
  t.teardown(stop);

  const [etcdPort, peerPort, port] = [await freePort(), await freePort(), await freePort()];
  const etcdUrl = `http://127.0.0.1:${etcdPort}`;
  const etcd = spawnLogged(
    join(BIN, 'etcd'),
    [
      '--name=test',
      `--data-dir=${join(dir, 'etcd')}`,
      `--listen-client-urls=${etcdUrl}`,
      `--advertise-client-urls=${etcdUrl}`,
      `--listen-peer-urls=http://127.0.0.1:${peerPort}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${peerPort}`,
      `--initial-cluster=test=http://127.0.0.1:${peerPort}`,
      '--unsafe-no-fsync',
      '--log-level=error',
    ],
    join(dir, 'etcd.log'),
  );
  children.push(etcd);

  const key = join(dir, 'sa.key');
  const pub = join(dir, 'sa.pub');
  execFileSync('openssl', ['genrsa', '-out', key, '2048'], { stdio: 'ignore' });
  execFileSync('openssl', ['rsa', '-in', key, '-pubout', '-out', pub], { stdio: 'ignore' });
  const adminToken = `admin-${Math.random().toString(36).slice(2)}`;
  const tokens = new Map<string, string>([['admin', adminToken]]);
  for (const u of TEST_USERS) tokens.set(u, `${u}-${Math.random().toString(36).slice(2)}`);
  writeFileSync(
    join(dir, 'tokens.csv'),
    [...tokens].map(([user, token], i) => `${token},${user},${i + 1}${user === 'admin' ? ',"system:masters"' : ''}`).join('\n') + '\n',
  );

  // etcd first: the API server gives up on a missing etcd only slowly.
  const etcdDeadline = Date.now() + 30_000;
  for (;;) {
    if (etcd.exitCode !== null) throw new Error(`etcd exited (${etcd.exitCode}): ${tail(etcd)}`);
    try {
      const r = await httpCall(`${etcdUrl}/health`, 'GET');
      if (r.status === 200) break;
    } catch {
      // not yet
    }
    if (Date.now() > etcdDeadline) throw new Error(`etcd not healthy after 30 s: ${tail(etcd)}`);
    await new Promise((r) => setTimeout(r, 200));
  }

  const certDir = join(dir, 'certs');
  const apiserver = spawnLogged(
    join(BIN, 'kube-apiserver'),
    [
      `--etcd-servers=${etcdUrl}`,
      '--bind-address=127.0.0.1',
      '--advertise-address=127.0.0.1',
      // The kubernetes Service's endpoints may not be loopback: no reconciler (nothing dials it here).
      '--endpoint-reconciler-type=none',
      `--secure-port=${port}`,
      `--cert-dir=${certDir}`,
      '--authorization-mode=RBAC',
      `--token-auth-file=${join(dir, 'tokens.csv')}`,
      `--service-account-key-file=${pub}`,
      `--service-account-signing-key-file=${key}`,
      '--service-account-issuer=https://kubernetes.default.svc',
      '--service-cluster-ip-range=10.96.0.0/24',
      // Pods straight from etcd: a watch from a compacted resourceVersion answers 410 Gone.
      '--watch-cache-sizes=pods#0',
      '--enable-priority-and-fairness=false',
      '--profiling=false',
      '--v=0',
    ],
    join(dir, 'kube-apiserver.log'),
  );
  children.push(apiserver);

  const url = `https://127.0.0.1:${port}`;
  const deadline = Date.now() + (opts.readyTimeoutMs ?? 120_000);
  let last = '';
  for (;;) {
    if (apiserver.exitCode !== null) throw new Error(`kube-apiserver exited (${apiserver.exitCode}): ${tail(apiserver)}`);
    try {
      const r = await get(`${url}/readyz`, adminToken);
      if (r.status === 200) break;
      last = `${r.status} ${r.body.slice(0, 500)}`;
    } catch (err) {
      last = (err as Error).message;
    }
    if (Date.now() > deadline) throw new Error(`kube-apiserver not ready after ${opts.readyTimeoutMs ?? 120_000} ms (${last}): ${tail(apiserver)}`);
    await new Promise((r) => setTimeout(r, 250));
  }

  const caFile = join(certDir, 'apiserver.crt');
  const kubeConfig = (o: { token?: string; server?: string; namespace?: string } = {}): KubeConfig => {
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: 'test', server: o.server ?? url, caFile, skipTLSVerify: false }],
      users: [{ name: 'test', token: o.token ?? adminToken }],
      contexts: [{ name: 'test', cluster: 'test', user: 'test', namespace: o.namespace ?? 'default' }],
      currentContext: 'test',
    });
    return kc;
  };
  let files = 0;
  const kubeconfigFile = (o: { token?: string; server?: string; namespace?: string } = {}): string => {
    const file = join(dir, `kubeconfig-${files++}.yaml`);
    writeFileSync(
      file,
      stringify({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [{ name: 'test', cluster: { server: o.server ?? url, 'certificate-authority': caFile } }],
        users: [{ name: 'test', user: { token: o.token ?? adminToken } }],
        contexts: [{ name: 'test', context: { cluster: 'test', user: 'test', namespace: o.namespace ?? 'default' } }],
        'current-context': 'test',
      }),
    );
    return file;
  };
  const adminKc = kubeConfig();
  return {
    url,
    port,
    caFile,
    etcdUrl,
    dir,
    adminToken,
    tokenOf: (user) => {
      const tok = tokens.get(user);
      if (!tok) throw new Error(`no test user ${user}`);
      return tok;
    },
    kubeConfig,
    kubeconfigFile,
    admin: adminKc.makeApiClient(CoreV1Api),
    rbac: adminKc.makeApiClient(RbacAuthorizationV1Api),
    compact: async () => {
      const range = await etcdPost(etcdUrl, '/v3/kv/range', { key: Buffer.from('/').toString('base64') });
      const revision = Number((range.header as { revision: string }).revision);
      await etcdPost(etcdUrl, '/v3/kv/compaction', { revision: String(revision), physical: true });
      return revision;
    },
    stop,
  };
}

/** A namespace with the `default` ServiceAccount (no controller-manager runs to make it). */
export async function makeNamespace(k: KubeApiServer, name: string): Promise<void> {
  await k.admin.createNamespace({ body: { metadata: { name } } });
  await k.admin.createNamespacedServiceAccount({ namespace: name, body: { metadata: { name: 'default' } } });
}

/**
 * The gateway's identity from deploy/kubernetes, for real, in `namespace`: its
 * ServiceAccount, Role and RoleBinding exactly as the manifests say, and a
 * token of that ServiceAccount (TokenRequest), so the driver runs under the
 * manifest's Role and nothing more.
 */
export async function gatewayIdentity(k: KubeApiServer, namespace: string): Promise<string> {
  const objects = renderKustomization(DEPLOY_DIR, namespace);
  const sa = findObject<V1ServiceAccount>(objects, 'ServiceAccount');
  await k.admin.createNamespacedServiceAccount({ namespace, body: sa });
  await k.rbac.createNamespacedRole({ namespace, body: findObject<V1Role>(objects, 'Role') });
  await k.rbac.createNamespacedRoleBinding({ namespace, body: findObject<V1RoleBinding>(objects, 'RoleBinding') });
  const tr = await k.admin.createNamespacedServiceAccountToken({
    name: sa.metadata!.name!,
    namespace,
    body: { spec: { audiences: ['https://kubernetes.default.svc'], expirationSeconds: 3600 } },
  });
  return tr.status!.token;
}

/**
 * Plays the kubelet for a namespace: a Node object, binding, status writes,
 * and finishing graceful deletions of Pods bound to its Node (as a kubelet
 * does once containers are stopped).
 */
export class FakeKubelet {
  readonly node: string;
  readonly #k: KubeApiServer;
  readonly #ns: string;
  #watch: AbortController | null = null;
  #closed = false;

  constructor(k: KubeApiServer, namespace: string, node = 'test-node') {
    this.#k = k;
    this.#ns = namespace;
    this.node = node;
  }

  async start(t: Teardown): Promise<void> {
    t.teardown(() => this.close());
    try {
      await this.#k.admin.createNode({
        body: {
          metadata: { name: this.node, labels: { 'kubernetes.io/hostname': this.node } },
          status: { capacity: { cpu: '8', memory: '32Gi', pods: '250' }, allocatable: { cpu: '8', memory: '32Gi', pods: '250' } },
        },
      });
    } catch (err) {
      if ((err as { code?: number }).code !== 409) throw err;
    }
    await this.#run();
  }

  async #run(): Promise<void> {
    if (this.#closed) return;
    this.#watch = await new Watch(this.#k.kubeConfig()).watch(
      `/api/v1/namespaces/${this.#ns}/pods`,
      {},
      (type: string, obj: V1Pod) => {
        if (type !== 'ERROR' && obj.metadata?.deletionTimestamp && obj.spec?.nodeName === this.node) {
          this.#k.admin
            .deleteNamespacedPod({ name: obj.metadata.name!, namespace: this.#ns, gracePeriodSeconds: 0 })
            .catch(() => undefined);
        }
      },
      () => {
        if (!this.#closed) setTimeout(() => void this.#run(), 200);
      },
    );
  }

  async bind(pod: string): Promise<void> {
    await this.#k.admin.createNamespacedPodBinding({
      name: pod,
      namespace: this.#ns,
      body: { metadata: { name: pod }, target: { apiVersion: 'v1', kind: 'Node', name: this.node } },
    });
  }

  /** Replaces the Pod's status (pods/status, as the kubelet writes it). */
  async setStatus(pod: string, status: (p: V1Pod) => V1PodStatus): Promise<V1Pod> {
    for (;;) {
      const current = await this.#k.admin.readNamespacedPod({ name: pod, namespace: this.#ns });
      current.status = status(current);
      try {
        return await this.#k.admin.replaceNamespacedPodStatus({ name: pod, namespace: this.#ns, body: current });
      } catch (err) {
        if ((err as { code?: number }).code !== 409) throw err;
      }
    }
  }

  running(pod: string): Promise<V1Pod> {
    return this.setStatus(pod, (p) => ({
      phase: 'Running',
      conditions: [{ type: 'Ready', status: 'True' }],
      initContainerStatuses: (p.spec?.initContainers ?? []).map((c) => containerStatus(c.name, c.image!, { terminated: { exitCode: 0, reason: 'Completed' } })),
      containerStatuses: (p.spec?.containers ?? []).map((c) => containerStatus(c.name, c.image!, { running: { startedAt: new Date() } })),
      startTime: new Date(),
    }));
  }

  close(): void {
    this.#closed = true;
    this.#watch?.abort();
  }
}

export function containerStatus(name: string, image: string, state: V1ContainerStatus['state']): V1ContainerStatus {
  return { name, image, imageID: '', ready: !!state?.running, restartCount: 0, state };
}

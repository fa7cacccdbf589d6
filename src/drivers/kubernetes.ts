import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  ApiException,
  CoreV1Api,
  KubeConfig,
  ServerConfiguration,
  Watch,
  createConfiguration,
  type RequestContext,
  type ResponseContext,
  type V1Container,
  type V1ContainerStatus,
  type V1EnvVar,
  type V1Pod,
  type V1ResourceRequirements,
  type V1Secret,
} from '@kubernetes/client-node';
import { BUNDLE_MANIFEST, BUNDLE_MOUNT, bundleDir, supervisorArgv, type BundleManifest } from '../bundle/manifest.js';
import { OpenShellError, invalidArgument } from '../errors.js';
import { SUPERVISOR_NODE_FLAGS } from '../paths.js';
import type { Logger } from '../log.js';
import { CONFINEMENT_CAPABILITIES } from '../supervisor/isolation/capabilities.js';
import type { Resources } from '../schemas/sandbox.js';
import type { BackendState, ComputeDriver, SandboxSpec } from './types.js';

/** Labels on every object the driver makes; the selector that finds them again after a restart. */
export const LABEL_ID = 'openshell.sandbox.id';
export const LABEL_NAME = 'openshell.sandbox.name';
export const LABEL_MANAGED_BY = 'app.kubernetes.io/managed-by';
export const MANAGED_BY = 'openshell';
const SELECTOR = `${LABEL_ID},${LABEL_MANAGED_BY}=${MANAGED_BY}`;

/** Where the supervisor bundle lives in the supervisor image and in the workload. */
export const BUNDLE_DIR = BUNDLE_MOUNT;
/** The bundle's layout (`src/bundle/build.ts`), used when this gateway has no built bundle to read it from. */
const DEFAULT_LAYOUT: BundleManifest = {
  loader: 'lib/ld-linux-x86-64.so.2',
  libDir: 'lib',
  node: 'bin/node',
  entry: 'supervisor/main.mjs',
  tools: {},
};

/** The bundle's layout: this gateway's own bundle (the one its image ships) or the default. */
function bundleLayout(): BundleManifest {
  try {
    return JSON.parse(readFileSync(join(bundleDir(), BUNDLE_MANIFEST), 'utf8')) as BundleManifest;
  } catch {
    return DEFAULT_LAYOUT;
  }
}

/** The supervisor's argv in the workload (up to and including `--`); the sandbox's command follows as args. */
export function supervisorCommand(layout: BundleManifest = bundleLayout()): string[] {
  return supervisorArgv(layout, BUNDLE_DIR, SUPERVISOR_NODE_FLAGS, []);
}
/** The bundle's loader running its own Node, without the supervisor: what the init container copies with. */
function bundleNode(layout: BundleManifest = bundleLayout()): string[] {
  return [join(BUNDLE_DIR, layout.loader), '--library-path', join(BUNDLE_DIR, layout.libDir), join(BUNDLE_DIR, layout.node)];
}
const BUNDLE_STAGING = '/openshell-bundle';
const TOKEN_DIR = '/run/openshell/token';
const TOKEN_KEY = 'token';
const WORKLOAD = 'sandbox';
const INIT = 'supervisor-bundle';

const SA_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/** Waiting reasons after which the container will not start by itself. */
const FATAL_WAITING = new Set([
  'ErrImagePull',
  'ImagePullBackOff',
  'InvalidImageName',
  'ErrImageNeverPull',
  'CreateContainerConfigError',
  'CreateContainerError',
  'RunContainerError',
  'CrashLoopBackOff',
]);

export interface KubernetesDriverOptions {
  log: Logger;
  /** `--k8s-namespace`; empty = the gateway's own namespace in a Pod, else the kubeconfig context's, else `default`. */
  namespace?: string;
  /** `--kubeconfig`; empty = in-cluster config in a Pod, else the default kubeconfig. */
  kubeconfig?: string;
  /** A loaded config (tests); wins over `kubeconfig`. */
  kubeConfig?: KubeConfig;
  /** `--supervisor-image`; empty = the gateway's own image (read from its own Pod). */
  supervisorImage?: string;
  /** `--default-image`: the workload image of sandboxes created without one. */
  defaultImage?: string;
  /** `--k8s-start-timeout-ms`: a Pod still Pending this long after creation is an Error. */
  startTimeoutMs?: number;
  /** `--isolation`, handed to the supervisor. */
  isolation?: 'auto' | 'none';
  /** Bound on every API call but watches (default 15 s): an unreachable API server is an error in bounded time. */
  requestTimeoutMs?: number;
  /** Full relist this often even when the watch is healthy (default 5 min). */
  resyncMs?: number;
  /** Server-side timeout of one watch request (default 240–360 s, spread). */
  watchTimeoutSeconds?: number;
  /** A watch stream silent this much longer than its server timeout is taken for dead (default 30 s). */
  watchIdleGraceMs?: number;
  /** How long delete waits for the Pod object to go (default 60 s); past it the Pod is left terminating. */
  deleteWaitMs?: number;
}

/** The driver's view of one Pod, derived from its phase and container states. */
export interface PodVerdict {
  state: BackendState['state'];
  /** Why, in the backend's words: `ImagePullBackOff: …`, `OOMKilled`, `Evicted: …`, `Unschedulable: …`. */
  message: string;
  /** Still Pending (scheduling, pulling, the init container): the start timeout applies. */
  pending: boolean;
}

/**
 * Maps a Pod to the sandbox's backend state. Pending and Running Pods are
 * alive (readiness is the gateway's: the supervisor dials in); a Pod that
 * failed, finished, cannot pull its image, was OOM-killed or evicted, or has
 * been Pending past the start timeout is an Error with the backend's reason.
 */
export function podVerdict(pod: V1Pod, now: number, startTimeoutMs: number): PodVerdict {
  const status = pod.status ?? {};
  const phase = status.phase ?? 'Pending';
  const containers = [...(status.initContainerStatuses ?? []), ...(status.containerStatuses ?? [])];
  const term = containers.map(terminatedReason).find((r) => r !== null);
  if (pod.metadata?.deletionTimestamp) {
    return { state: 'Error', message: `Pod ${pod.metadata.name} is being deleted outside the gateway`, pending: false };
  }
  if (phase === 'Failed') {
    const why = [status.reason, status.message].filter(Boolean).join(': ');
    return { state: 'Error', message: `Pod failed: ${why || term || 'no reason given'}${why && term ? ` (${term})` : ''}`, pending: false };
  }
  if (phase === 'Succeeded') {
    return { state: 'Error', message: `Pod finished: the supervisor exited${term ? ` (${term})` : ''}`, pending: false };
  }
  for (const c of containers) {
    const w = c.state?.waiting;
    if (w?.reason && FATAL_WAITING.has(w.reason)) {
      return { state: 'Error', message: `${w.reason}: container ${c.name}${w.message ? `: ${w.message}` : ''}`, pending: false };
    }
  }
  // restartPolicy Never: a terminated workload container means the supervisor is gone,
  // even before the kubelet moves the Pod to Failed.
  const workload = (status.containerStatuses ?? []).find((c) => c.name === WORKLOAD);
  if (workload?.state?.terminated) {
    return { state: 'Error', message: `container ${WORKLOAD} terminated: ${terminatedReason(workload)}`, pending: false };
  }
  if (phase === 'Pending') {
    const created = millis(pod.metadata?.creationTimestamp);
    if (created !== null && now - created >= startTimeoutMs) {
      const scheduled = status.conditions?.find((c) => c.type === 'PodScheduled' && c.status === 'False');
      const why = scheduled ? `${scheduled.reason ?? 'Unschedulable'}: ${scheduled.message ?? ''}`.trim() : pendingWhy(containers);
      return {
        state: 'Error',
        message: `Pod still Pending after ${Math.round(startTimeoutMs / 1000)} s${why ? ` (${why})` : ''}`,
        pending: false,
      };
    }
    return { state: 'Running', message: 'Pod Pending', pending: true };
  }
  if (phase === 'Unknown') return { state: 'Running', message: 'Pod phase Unknown (node unreachable)', pending: false };
  return { state: 'Running', message: 'Pod Running; waiting for the supervisor', pending: false };
}

function terminatedReason(c: V1ContainerStatus): string | null {
  const t = c.state?.terminated;
  if (!t) return null;
  if (t.reason === 'Completed' && t.exitCode === 0) return null;
  return `${t.reason ?? 'Error'}${t.exitCode !== undefined ? ` (exit code ${t.exitCode})` : ''}${t.message ? `: ${t.message}` : ''}`;
}

function pendingWhy(containers: V1ContainerStatus[]): string {
  for (const c of containers) {
    const w = c.state?.waiting;
    if (w?.reason) return `${w.reason}${w.message ? `: ${w.message}` : ''}`;
  }
  return '';
}

/** Watch events carry timestamps as strings, typed reads as Dates. */
function millis(t: Date | string | undefined): number | null {
  if (!t) return null;
  const ms = t instanceof Date ? t.getTime() : Date.parse(t);
  return Number.isNaN(ms) ? null : ms;
}

/** `sbx_0123abcd…` → `sbx-0123abcd…`: object names are DNS-1123; the id stays in the label. */
export function podName(id: string): string {
  return id.replace(/_/g, '-').toLowerCase();
}
export function secretName(id: string): string {
  return `${podName(id)}-token`;
}

/** `resources` as Kubernetes quantities: requests = limits, so the Pod is Guaranteed when all are set. */
export function resourceRequirements(r: Resources): V1ResourceRequirements | undefined {
  const q: Record<string, string> = {};
  if (r.cpus !== undefined) q.cpu = `${Math.max(1, Math.round(r.cpus * 1000))}m`;
  if (r.memoryMb !== undefined) q.memory = `${r.memoryMb}Mi`;
  if (r.diskMb !== undefined) q['ephemeral-storage'] = `${r.diskMb}Mi`;
  return Object.keys(q).length ? { requests: { ...q }, limits: { ...q } } : undefined;
}

export interface PodInputs {
  namespace: string;
  supervisorImage: string;
  image: string;
  isolation: 'auto' | 'none';
}

/** The Pod of one sandbox: a plain description, so a test can read it back field by field. */
export function buildPod(spec: SandboxSpec, o: PodInputs): V1Pod {
  const name = podName(spec.id);
  const labels = { [LABEL_ID]: spec.id, [LABEL_NAME]: spec.name, [LABEL_MANAGED_BY]: MANAGED_BY };
  const internal: V1EnvVar[] = [
    { name: 'OPENSHELL_SANDBOX_ID', value: spec.id },
    { name: 'OPENSHELL_ENDPOINT', value: spec.endpoint },
    { name: 'OPENSHELL_SANDBOX_TOKEN_FILE', value: `${TOKEN_DIR}/${TOKEN_KEY}` },
    { name: 'OPENSHELL_BUNDLE_DIR', value: BUNDLE_DIR },
    { name: 'OPENSHELL_ISOLATION', value: o.isolation },
  ];
  const reserved = new Set(internal.map((e) => e.name));
  const userEnv = Object.entries(spec.env)
    .filter(([k]) => !reserved.has(k))
    .map(([k, v]) => ({ name: k, value: v }));
  const resources = resourceRequirements(spec.resources);
  const workload: V1Container = {
    name: WORKLOAD,
    image: o.image,
    // The bundle is the entrypoint; the sandbox's command follows `--`. With no command the
    // supervisor runs no entrypoint (the image's own CMD is unknown here: no registry access).
    command: supervisorCommand(),
    args: spec.command,
    env: [...userEnv, ...internal],
    volumeMounts: [
      { name: 'openshell-bundle', mountPath: BUNDLE_DIR, readOnly: true },
      { name: 'openshell-token', mountPath: TOKEN_DIR, readOnly: true },
    ],
    securityContext: {
      runAsUser: 0,
      runAsNonRoot: false,
      privileged: false,
      // setpriv drops to the sandbox user with no_new_privs itself.
      allowPrivilegeEscalation: true,
      capabilities: { drop: ['ALL'], add: [...CONFINEMENT_CAPABILITIES] },
      // Not RuntimeDefault: the runtimes' default seccomp profile refuses pivot_root, which
      // bubblewrap needs for the sandbox's root (measured with Docker's, the same profile; see
      // docker-seccomp.ts). A node with that file installed as a Localhost profile can use it.
      // The runtimes' default AppArmor profile denies mount outright.
      seccompProfile: { type: 'Unconfined' },
      appArmorProfile: { type: 'Unconfined' },
    },
    ...(resources ? { resources } : {}),
  };
  const init: V1Container = {
    name: INIT,
    image: o.supervisorImage,
    // Copies with the bundle's own Node: the supervisor image needs no shell or cp.
    command: [
      ...bundleNode(),
      '-e',
      `require('node:fs').cpSync(${JSON.stringify(BUNDLE_DIR)}, ${JSON.stringify(BUNDLE_STAGING)}, { recursive: true, verbatimSymlinks: true })`,
    ],
    volumeMounts: [{ name: 'openshell-bundle', mountPath: BUNDLE_STAGING }],
    securityContext: {
      runAsNonRoot: false,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'] },
      seccompProfile: { type: 'RuntimeDefault' },
    },
    // The init container's requests count towards the Pod's only when larger than the workload's.
    ...(resources ? { resources } : {}),
  };
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: o.namespace, labels },
    spec: {
      restartPolicy: 'Never',
      automountServiceAccountToken: false,
      enableServiceLinks: false,
      terminationGracePeriodSeconds: 10,
      initContainers: [init],
      containers: [workload],
      volumes: [
        { name: 'openshell-bundle', emptyDir: {} },
        {
          name: 'openshell-token',
          secret: { secretName: secretName(spec.id), defaultMode: 0o400, items: [{ key: TOKEN_KEY, path: TOKEN_KEY }] },
        },
      ],
    },
  };
}

/** The per-sandbox token Secret, owned by its Pod so it goes with it. */
export function buildSecret(spec: SandboxSpec, pod: V1Pod, namespace: string): V1Secret {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: {
      name: secretName(spec.id),
      namespace,
      labels: { ...pod.metadata!.labels },
      ownerReferences: [{ apiVersion: 'v1', kind: 'Pod', name: pod.metadata!.name!, uid: pod.metadata!.uid!, controller: true }],
    },
    type: 'Opaque',
    immutable: true,
    stringData: { [TOKEN_KEY]: spec.token },
  };
}

/** Loads the client config: `kubeconfig` path, else in-cluster in a Pod, else the default kubeconfig. */
export function loadKubeConfig(kubeconfig = ''): { kc: KubeConfig; inCluster: boolean } {
  const kc = new KubeConfig();
  if (kubeconfig) {
    kc.loadFromFile(kubeconfig);
    return { kc, inCluster: false };
  }
  if (process.env.KUBERNETES_SERVICE_HOST && process.env.KUBERNETES_SERVICE_PORT) {
    kc.loadFromCluster();
    return { kc, inCluster: true };
  }
  kc.loadFromDefault();
  return { kc, inCluster: false };
}

/**
 * The error a refused or failed API call becomes: 403 → PERMISSION_DENIED
 * naming the verb and resource, 4xx with the server's Status message as
 * INVALID_ARGUMENT (422) / CONFLICT (409), else INTERNAL with the cause.
 */
export function apiError(what: string, err: unknown): OpenShellError {
  if (err instanceof ApiException) {
    const status = parseStatus(err.body);
    const msg = status?.message ?? (typeof err.body === 'string' ? err.body.slice(0, 500) : `HTTP ${err.code}`);
    const text = `kubernetes ${what}: ${msg}`;
    if (err.code === 403) {
      // RBAC says "User … cannot <verb> resource …"; admission (quota, LimitRange, PodSecurity) also answers 403.
      if (/cannot [a-z]+ resource/.test(msg)) {
        return new OpenShellError('PERMISSION_DENIED', `PERMISSION_DENIED: ${text}`, { cause: err, details: status });
      }
      if (/exceeded quota/.test(msg)) return new OpenShellError('RESOURCE_EXHAUSTED', text, { cause: err, details: status });
      return new OpenShellError('INVALID_ARGUMENT', text, { cause: err, details: status });
    }
    if (err.code === 401) return new OpenShellError('UNAUTHENTICATED', `UNAUTHENTICATED: ${text}`, { cause: err });
    if (err.code === 409) return new OpenShellError('CONFLICT', text, { cause: err, details: status });
    if (err.code === 400 || err.code === 422) return new OpenShellError('INVALID_ARGUMENT', text, { cause: err, details: status });
    if (err.code === 404) return new OpenShellError('NOT_FOUND', text, { cause: err, details: status });
    return new OpenShellError('INTERNAL', text, { cause: err, details: status });
  }
  const e = err as Error & { code?: string; type?: string };
  const why = e?.name === 'AbortError' || e?.type === 'aborted' ? 'no answer in time' : (e?.message ?? String(err));
  return new OpenShellError('INTERNAL', `kubernetes ${what}: API server unreachable: ${why}`, { cause: err });
}

interface K8sStatus {
  kind?: string;
  code?: number;
  reason?: string;
  message?: string;
}
function parseStatus(body: unknown): K8sStatus | null {
  if (typeof body === 'string') {
    try {
      return JSON.parse(body) as K8sStatus;
    } catch {
      return null;
    }
  }
  return body && typeof body === 'object' ? (body as K8sStatus) : null;
}

/** The watch's own errors carry only `statusCode` and the status text. */
function watchError(what: string, err: unknown): OpenShellError {
  const code = (err as { statusCode?: number } | null)?.statusCode;
  if (code === 403) {
    return new OpenShellError('PERMISSION_DENIED', `PERMISSION_DENIED: kubernetes ${what}: forbidden (HTTP 403): the Role lacks "watch" on pods`, { cause: err });
  }
  if (code === 401) return new OpenShellError('UNAUTHENTICATED', `UNAUTHENTICATED: kubernetes ${what}: HTTP 401`, { cause: err });
  if (code) return new OpenShellError('INTERNAL', `kubernetes ${what}: HTTP ${code} ${(err as Error).message}`, { cause: err });
  return apiError(what, err);
}

function isStatus(err: unknown, code: number): boolean {
  return err instanceof ApiException && err.code === code;
}

type WatchEnd = { kind: 'ended' } | { kind: 'gone' } | { kind: 'error'; err: unknown };

/**
 * One Pod per sandbox (plus its token Secret) in one namespace. A list+watch
 * loop keeps a cache of our Pods (by label), relisting on a timer (resync),
 * after `410 Gone` and after errors, and maps every change to a backend
 * state; the gateway turns Error/Gone into the sandbox's Error.
 */
export class KubernetesDriver implements ComputeDriver {
  readonly name = 'kubernetes';
  readonly namespace: string;
  readonly #o: KubernetesDriverOptions;
  readonly #log: Logger;
  readonly #kc: KubeConfig;
  readonly #inCluster: boolean;
  readonly #api: CoreV1Api;
  readonly #listeners = new Set<(state: BackendState) => void>();
  /** Our Pods as last seen, by sandbox id. */
  readonly #pods = new Map<string, V1Pod>();
  /** Last state reported per sandbox id, so listeners hear changes only. */
  readonly #reported = new Map<string, string>();
  readonly #pendingTimers = new Map<string, NodeJS.Timeout>();
  readonly #deleting = new Set<string>();
  /** Waiters for a Pod to go, by sandbox id. */
  readonly #goneWaiters = new Map<string, Set<() => void>>();
  readonly #abort = new AbortController();
  #watchAbort: AbortController | null = null;
  #loop: Promise<void> | null = null;
  #supervisorImage: Promise<string> | null = null;
  #resyncTimer: NodeJS.Timeout | undefined;
  #closed = false;
  /** Counters for tests and the benchmark. */
  readonly stats = { lists: 0, watches: 0, gone410: 0, watchErrors: 0 };
  /** Why the last list or watch failed (null once one succeeds): the watch has no caller to throw to. */
  watchError: OpenShellError | null = null;

  constructor(opts: KubernetesDriverOptions) {
    this.#o = opts;
    this.#log = opts.log.child({ component: 'driver', driver: 'kubernetes' });
    if (opts.kubeConfig) {
      this.#kc = opts.kubeConfig;
      this.#inCluster = false;
    } else {
      const { kc, inCluster } = loadKubeConfig(opts.kubeconfig);
      this.#kc = kc;
      this.#inCluster = inCluster;
    }
    this.namespace = opts.namespace || this.#defaultNamespace();
    const cluster = this.#kc.getCurrentCluster();
    if (!cluster) throw new Error('kubernetes driver: the kubeconfig names no current cluster');
    const timeoutMs = opts.requestTimeoutMs ?? 15_000;
    this.#api = new CoreV1Api(
      createConfiguration({
        baseServer: new ServerConfiguration(cluster.server, {}),
        authMethods: { default: this.#kc },
        promiseMiddleware: [
          {
            // node-fetch has no timeout of its own: bound every call, and end them all at close().
            pre: async (ctx: RequestContext) => {
              ctx.setSignal(AbortSignal.any([AbortSignal.timeout(timeoutMs), this.#abort.signal]) as never);
              return ctx;
            },
            post: async (ctx: ResponseContext) => ctx,
          },
        ],
      }),
    );
    this.#log.info({ server: cluster.server, namespace: this.namespace, inCluster: this.#inCluster }, 'kubernetes driver');
  }

  #defaultNamespace(): string {
    if (this.#inCluster) {
      try {
        return readFileSync(`${SA_DIR}/namespace`, 'utf8').trim();
      } catch {
        // fall through
      }
    }
    const ctx = this.#kc.getContextObject(this.#kc.getCurrentContext());
    return ctx?.namespace || 'default';
  }

  async create(spec: SandboxSpec): Promise<void> {
    if (this.#closed) throw new Error('kubernetes driver closed');
    const image = spec.image || this.#o.defaultImage;
    if (!image) throw invalidArgument('image', 'required: the sandbox names none and the gateway has no --default-image');
    const supervisorImage = await this.#resolveSupervisorImage();
    const body = buildPod(spec, {
      namespace: this.namespace,
      supervisorImage,
      image,
      isolation: this.#o.isolation ?? 'auto',
    });
    let pod: V1Pod;
    try {
      pod = await this.#api.createNamespacedPod({ namespace: this.namespace, body });
    } catch (err) {
      throw apiError(`create pods ${body.metadata!.name} in ${this.namespace}`, err);
    }
    // Not put in the cache here: only the list+watch stream does, so a list that began before
    // this create can never take the new Pod for one deleted underneath us.
    try {
      await this.#api.createNamespacedSecret({ namespace: this.namespace, body: buildSecret(spec, pod, this.namespace) });
    } catch (err) {
      const e = apiError(`create secrets ${secretName(spec.id)} in ${this.namespace}`, err);
      // The Pod cannot start without its token: take it back.
      await this.#deletePod(spec.id).catch(() => undefined);
      throw e;
    }
    this.#log.info({ sandboxId: spec.id, pod: pod.metadata?.name, image }, 'pod created');
  }

  /** The gateway's own image, read from its own Pod, when `--supervisor-image` is not set. */
  #resolveSupervisorImage(): Promise<string> {
    if (this.#o.supervisorImage) return Promise.resolve(this.#o.supervisorImage);
    this.#supervisorImage ??= (async () => {
      const self = process.env.HOSTNAME;
      if (!this.#inCluster || !self) {
        throw invalidArgument('--supervisor-image', 'required when the gateway does not run in a Pod');
      }
      let pod: V1Pod;
      try {
        pod = await this.#api.readNamespacedPod({ name: self, namespace: this.namespace });
      } catch (err) {
        throw apiError(`get pods ${self} (the gateway's own Pod, for its image)`, err);
      }
      const c = pod.spec?.containers.find((x) => x.name === 'gateway') ?? pod.spec?.containers[0];
      if (!c?.image) throw new Error(`the gateway's Pod ${self} names no image`);
      return c.image;
    })().catch((err: unknown) => {
      this.#supervisorImage = null;
      throw err;
    });
    return this.#supervisorImage;
  }

  async delete(id: string): Promise<void> {
    this.#deleting.add(id);
    try {
      await this.#deletePod(id);
      // The garbage collector would remove the Secret with its owner; do not rely on one running.
      try {
        await this.#api.deleteNamespacedSecret({ name: secretName(id), namespace: this.namespace });
      } catch (err) {
        if (!isStatus(err, 404)) throw apiError(`delete secrets ${secretName(id)}`, err);
      }
      await this.#waitGone(id);
    } finally {
      this.#deleting.delete(id);
    }
  }

  async #deletePod(id: string): Promise<void> {
    try {
      await this.#api.deleteNamespacedPod({ name: podName(id), namespace: this.namespace });
    } catch (err) {
      if (!isStatus(err, 404)) throw apiError(`delete pods ${podName(id)}`, err);
    }
  }

  /** Resolves once the Pod object is gone (seen by the watch, or a read answers 404), or after `deleteWaitMs`. */
  async #waitGone(id: string): Promise<void> {
    const deadline = Date.now() + (this.#o.deleteWaitMs ?? 60_000);
    for (;;) {
      try {
        await this.#api.readNamespacedPod({ name: podName(id), namespace: this.namespace });
      } catch (err) {
        if (isStatus(err, 404)) {
          this.#forget(id);
          return;
        }
        throw apiError(`get pods ${podName(id)}`, err);
      }
      const left = deadline - Date.now();
      if (left <= 0 || this.#closed) {
        this.#log.warn({ sandboxId: id }, 'pod still terminating; leaving it to the kubelet');
        this.#forget(id);
        return;
      }
      await new Promise<void>((resolve) => {
        const waiters = this.#goneWaiters.get(id) ?? new Set();
        this.#goneWaiters.set(id, waiters);
        const done = () => {
          clearTimeout(timer);
          waiters.delete(done);
          resolve();
        };
        const timer = setTimeout(done, Math.min(left, 2000));
        waiters.add(done);
      });
    }
  }

  async list(): Promise<BackendState[]> {
    const pods = await this.#listPods();
    const now = Date.now();
    return pods.map((pod) => {
      const v = podVerdict(pod, now, this.#startTimeoutMs);
      return { id: pod.metadata!.labels![LABEL_ID]!, state: v.state, message: v.message };
    });
  }

  watch(listener: (state: BackendState) => void): () => void {
    this.#listeners.add(listener);
    if (!this.#loop && !this.#closed) this.#loop = this.#run();
    return () => this.#listeners.delete(listener);
  }

  get #startTimeoutMs(): number {
    return this.#o.startTimeoutMs ?? 300_000;
  }

  async #listPods(): Promise<V1Pod[]> {
    try {
      const list = await this.#api.listNamespacedPod({ namespace: this.namespace, labelSelector: SELECTOR });
      return list.items.filter((p) => p.metadata?.labels?.[LABEL_ID]);
    } catch (err) {
      throw apiError(`list pods in ${this.namespace}`, err);
    }
  }

  /** List, then watch from the list's resourceVersion; relist on 410, on errors (with backoff) and on resync. */
  async #run(): Promise<void> {
    let backoff = 500;
    const resyncMs = this.#o.resyncMs ?? 300_000;
    let resyncDue = false;
    this.#resyncTimer = setInterval(() => {
      resyncDue = true;
      this.#watchAbort?.abort();
    }, resyncMs).unref();
    while (!this.#closed) {
      let rv: string;
      try {
        this.stats.lists++;
        const list = await this.#api.listNamespacedPod({ namespace: this.namespace, labelSelector: SELECTOR });
        rv = list.metadata?.resourceVersion ?? '';
        this.#replace(list.items);
        this.watchError = null;
        backoff = 500;
      } catch (err) {
        if (this.#closed) break;
        this.stats.watchErrors++;
        this.watchError = apiError(`list pods in ${this.namespace}`, err);
        this.#log.error({ err: this.watchError, retryInMs: backoff }, 'pod list failed');
        await this.#sleep(backoff);
        backoff = Math.min(backoff * 2, 30_000);
        continue;
      }
      resyncDue = false;
      // Watch until the stream answers 410 (relist) or fails (relist after a pause); a stream that
      // just ends (server timeout, dropped connection) is watched again from the last version seen.
      for (;;) {
        if (this.#closed || resyncDue) break;
        const end = await this.#watchOnce(rv, (next) => (rv = next));
        if (this.#closed || resyncDue) break;
        if (end.kind === 'ended') continue;
        if (end.kind === 'gone') {
          this.stats.gone410++;
          this.#log.info({ resourceVersion: rv }, 'watch: 410 Gone, relisting');
          break;
        }
        this.stats.watchErrors++;
        this.watchError = watchError(`watch pods in ${this.namespace}`, end.err);
        this.#log.error({ err: this.watchError, retryInMs: backoff }, 'pod watch failed; relisting');
        await this.#sleep(backoff);
        backoff = Math.min(backoff * 2, 30_000);
        break;
      }
    }
    clearInterval(this.#resyncTimer);
  }

  #watchOnce(resourceVersion: string, setRv: (rv: string) => void): Promise<WatchEnd> {
    this.stats.watches++;
    const timeoutSeconds = this.#o.watchTimeoutSeconds ?? 240 + Math.floor(Math.random() * 120);
    return new Promise<WatchEnd>((resolve) => {
      let result: WatchEnd = { kind: 'ended' };
      let settled = false;
      const local = new AbortController();
      this.#watchAbort = local;
      // A silently dead connection (NAT, conntrack) sends nothing: bookmarks come about once a minute,
      // so a stream quiet for longer than its own server timeout is abandoned.
      let idle: NodeJS.Timeout;
      const armIdle = () => {
        clearTimeout(idle);
        idle = setTimeout(() => local.abort(), timeoutSeconds * 1000 + (this.#o.watchIdleGraceMs ?? 30_000)).unref();
      };
      armIdle();
      const finish = (end: WatchEnd) => {
        if (settled) return;
        settled = true;
        clearTimeout(idle);
        local.abort();
        if (this.#watchAbort === local) this.#watchAbort = null;
        resolve(end);
      };
      const onAbort = () => finish(result);
      local.signal.addEventListener('abort', onAbort, { once: true });
      this.#abort.signal.addEventListener('abort', () => local.abort(), { once: true, signal: local.signal });
      new Watch(this.#kc)
        .watch(
          `/api/v1/namespaces/${encodeURIComponent(this.namespace)}/pods`,
          { labelSelector: SELECTOR, resourceVersion, allowWatchBookmarks: true, timeoutSeconds },
          (type: string, obj: unknown) => {
            armIdle();
            if (type === 'ERROR') {
              const s = obj as K8sStatus;
              result = s?.code === 410 ? { kind: 'gone' } : { kind: 'error', err: new Error(`watch error: ${s?.message ?? JSON.stringify(obj)}`) };
              local.abort();
              return;
            }
            const pod = obj as V1Pod;
            const next = pod?.metadata?.resourceVersion;
            if (next) setRv(next);
            if (type === 'BOOKMARK') return;
            if (type === 'DELETED') this.#removed(pod);
            else this.#remember(pod);
          },
          (err: unknown) => {
            const code = (err as { statusCode?: number } | null)?.statusCode;
            if (code === 410) finish({ kind: 'gone' });
            else if (err && result.kind === 'ended' && !local.signal.aborted) finish({ kind: 'error', err });
            else finish(result);
          },
        )
        .then(
          (controller) => {
            if (settled) controller.abort();
            else local.signal.addEventListener('abort', () => controller.abort(), { once: true });
          },
          (err: unknown) => finish({ kind: 'error', err }),
        );
    });
  }

  /** A fresh list: Pods not in it went away while we were not watching. */
  #replace(pods: V1Pod[]): void {
    const seen = new Set<string>();
    for (const pod of pods) {
      const id = pod.metadata?.labels?.[LABEL_ID];
      if (!id) continue;
      seen.add(id);
      this.#remember(pod);
    }
    for (const [id, pod] of this.#pods) if (!seen.has(id)) this.#removed(pod);
  }

  #remember(pod: V1Pod): void {
    const id = pod.metadata?.labels?.[LABEL_ID];
    if (!id) return;
    const known = this.#pods.get(id);
    // A typed read and a watch event of the same version carry the same state.
    if (known && Number(known.metadata?.resourceVersion) > Number(pod.metadata?.resourceVersion)) return;
    this.#pods.set(id, pod);
    this.#evaluate(id, pod);
  }

  #evaluate(id: string, pod: V1Pod): void {
    if (this.#deleting.has(id)) return;
    const v = podVerdict(pod, Date.now(), this.#startTimeoutMs);
    clearTimeout(this.#pendingTimers.get(id));
    this.#pendingTimers.delete(id);
    if (v.pending) {
      const created = millis(pod.metadata?.creationTimestamp) ?? Date.now();
      const due = Math.max(0, created + this.#startTimeoutMs - Date.now());
      this.#pendingTimers.set(
        id,
        setTimeout(() => {
          this.#pendingTimers.delete(id);
          const current = this.#pods.get(id);
          if (current) this.#evaluate(id, current);
        }, due + 50).unref(),
      );
    }
    this.#report({ id, state: v.state, message: v.message });
  }

  #removed(pod: V1Pod): void {
    const id = pod.metadata?.labels?.[LABEL_ID];
    if (!id) return;
    const wasDeleting = this.#deleting.has(id);
    this.#forget(id);
    for (const w of [...(this.#goneWaiters.get(id) ?? [])]) w();
    if (!wasDeleting) this.#report({ id, state: 'Gone', message: `Pod ${pod.metadata?.name} was deleted outside the gateway` });
    this.#reported.delete(id);
  }

  #forget(id: string): void {
    this.#pods.delete(id);
    clearTimeout(this.#pendingTimers.get(id));
    this.#pendingTimers.delete(id);
    this.#reported.delete(id);
  }

  #report(state: BackendState): void {
    const key = `${state.state}\0${state.message}`;
    if (this.#reported.get(state.id) === key) return;
    this.#reported.set(state.id, key);
    if (state.state !== 'Running') this.#log.info({ sandboxId: state.id, state: state.state, reason: state.message }, 'pod state');
    for (const l of this.#listeners) l(state);
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t);
        this.#abort.signal.removeEventListener('abort', done);
        resolve();
      };
      const t = setTimeout(done, ms);
      this.#abort.signal.addEventListener('abort', done, { once: true });
    });
  }

  /** Pods the watch currently knows (the benchmark's per-Pod memory). */
  get watchedPods(): number {
    return this.#pods.size;
  }

  /** Stops watching; leaves every Pod running (the next gateway adopts them). Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#abort.abort();
    this.#watchAbort?.abort();
    clearInterval(this.#resyncTimer);
    for (const t of this.#pendingTimers.values()) clearTimeout(t);
    this.#pendingTimers.clear();
    await this.#loop?.catch(() => undefined);
  }
}

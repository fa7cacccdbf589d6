import { createHash } from 'node:crypto';
import { cpSync, existsSync, readFileSync, statSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join, relative, resolve, sep } from 'node:path';
import { createInterface } from 'node:readline';
import Docker from 'dockerode';
import type { Logger } from '../log.js';
import { BUNDLE_MANIFEST, BUNDLE_MOUNT, bundleDir, supervisorArgv, type BundleManifest } from '../bundle/manifest.js';
import { SUPERVISOR_NODE_FLAGS } from '../paths.js';
import { CONFINEMENT_CAPABILITIES } from '../supervisor/isolation/capabilities.js';
import { seccompProfile } from './docker-seccomp.js';
import type { BackendState, ComputeDriver, SandboxSpec } from './types.js';

export const LABEL_ID = 'openshell.sandbox.id';
export const LABEL_NAME = 'openshell.sandbox.name';
/** Which gateway owns a container: a hash of its state dir, so gateways sharing an engine never adopt each other's. */
export const LABEL_GATEWAY = 'openshell.gateway';

/** Inside the container: the gateway's socket directory and the sandbox's secret directory. */
const GATEWAY_SOCKET_DIR = '/run/openshell-gateway';
const SECRET_DIR = '/run/openshell-secret';
/** Docker refuses smaller memory limits ("Minimum memory limit allowed is 6MB"). */
const MIN_MEMORY_BYTES = 6 * 1024 * 1024;
/** Storage drivers whose containers take a `size` storage option (overlay2 only on xfs with pquota). */
const SECCOMP = seccompProfile();
const SIZED_STORAGE = new Set(['btrfs', 'zfs', 'devicemapper', 'windowsfilter']);

export interface DockerDriverOptions {
  log: Logger;
  /** `unix:///path`, `tcp://host:port` or `http(s)://host:port` (`--docker-host`). */
  dockerHost: string;
  /** The network sandbox containers join (`--docker-network`). */
  network: string;
  /** Image of sandboxes created without one (`--default-image`). */
  defaultImage: string;
  /** The gateway's state dir: per-sandbox directories live under it, and it names the owning gateway. */
  stateDir: string;
  /** `--isolation`, handed to the supervisor. */
  isolation: 'auto' | 'none';
  /** The supervisor bundle on this machine (default: the package's `dist/bundle`). */
  bundleDir?: string;
  /** Directory holding the gateway's Unix socket for supervisors, bind-mounted into every container; null = TCP only. */
  socketDir?: () => string | null;
  /** Environment every supervisor gets (e.g. NODE_EXTRA_CA_CERTS). */
  supervisorEnv?: Record<string, string>;
  /** How long a pull of a missing image may take before the sandbox goes to Error. */
  pullTimeoutMs?: number;
}

interface EngineInfo {
  cpus: number;
  storageDriver: string;
  backingFs: string;
}

/**
 * One container per sandbox on a Docker (or Podman, through its
 * Docker-compatible API) engine. The supervisor bundle is bind-mounted
 * read-only and is the entrypoint; it starts the image's own command (or the
 * sandbox's). The engine's event stream drives state: a container that dies
 * puts its sandbox in Error with the exit code or OOM kill; one removed
 * behind our back is Gone.
 */
export class DockerDriver implements ComputeDriver {
  readonly name = 'docker';
  readonly #o: DockerDriverOptions;
  readonly #log: Logger;
  readonly #docker: Docker;
  readonly #tag: string;
  readonly #listeners = new Set<(state: BackendState) => void>();
  readonly #deleting = new Set<string>();
  readonly #oom = new Set<string>();
  readonly #abort = new AbortController();
  #info: Promise<EngineInfo> | undefined;
  #paths: Promise<PathMap> | undefined;
  #bundle: Promise<{ manifest: BundleManifest; hostDir: string }> | undefined;
  #events: NodeJS.ReadableStream | undefined;
  #closed = false;

  constructor(opts: DockerDriverOptions) {
    this.#o = opts;
    this.#log = opts.log.child({ component: 'driver', driver: 'docker' });
    this.#docker = new Docker(dockerConnection(opts.dockerHost));
    this.#tag = gatewayTag(opts.stateDir);
    void this.#watchEvents(0);
  }

  /** The label value naming this gateway's containers. */
  get gatewayTag(): string {
    return this.#tag;
  }

  sandboxDir(id: string): string {
    return join(this.#o.stateDir, 'docker', id);
  }

  async create(spec: SandboxSpec): Promise<void> {
    const image = spec.image || this.#o.defaultImage;
    if (!image) throw new Error('no image: create the sandbox with one, or start the gateway with --default-image');
    const resources = await this.#hostConfigLimits(spec);
    const [bundle, paths] = await Promise.all([this.#bundleReady(), this.#pathMap()]);

    const dir = this.sandboxDir(spec.id);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await writeFile(join(dir, 'token'), spec.token, { mode: 0o600 });

    const inspected = await this.#image(image);
    if (inspected) {
      await this.#run(spec, image, inspected, resources, bundle, paths);
      return;
    }
    // Missing locally: pull in the background (a pull may take minutes), then run; a failed pull is the sandbox's Error.
    void this.#pull(image).then(
      async () => {
        if (this.#deleting.has(spec.id) || this.#closed) return;
        const pulled = await this.#image(image);
        if (!pulled) throw new Error(`image ${image} not found after pulling it`);
        await this.#run(spec, image, pulled, resources, bundle, paths);
      },
    ).catch((err: unknown) => {
      if (this.#closed || this.#deleting.has(spec.id)) return;
      this.#log.warn({ err, sandboxId: spec.id, image }, 'image unavailable');
      this.#emit({ id: spec.id, state: 'Error', message: `image ${image}: ${engineMessage(err)}` });
    });
  }

  async #run(
    spec: SandboxSpec,
    image: string,
    inspected: Docker.ImageInspectInfo,
    limits: Partial<Docker.HostConfig>,
    bundle: { manifest: BundleManifest; hostDir: string },
    paths: PathMap,
  ): Promise<void> {
    const config = inspected.Config ?? ({} as Docker.ImageInspectInfo['Config']);
    const command = spec.command.length ? spec.command : [...(config.Entrypoint ?? []), ...(config.Cmd ?? [])];
    const socketDir = this.#o.socketDir?.() ?? null;
    const unixEndpoint = socketDir && spec.endpoint === `unix:${join(socketDir, 'gateway.sock')}`;
    const endpoint = unixEndpoint ? `unix:${GATEWAY_SOCKET_DIR}/gateway.sock` : spec.endpoint;
    const binds = [`${bundle.hostDir}:${BUNDLE_MOUNT}:ro`, `${paths.toEngine(this.sandboxDir(spec.id))}:${SECRET_DIR}:ro`];
    if (unixEndpoint) binds.push(`${paths.toEngine(socketDir)}:${GATEWAY_SOCKET_DIR}:ro`);
    const env: Record<string, string> = {
      ...envObject(config.Env ?? []),
      ...spec.env,
      ...this.#o.supervisorEnv,
      OPENSHELL_SANDBOX_ID: spec.id,
      OPENSHELL_SANDBOX_NAME: spec.name,
      OPENSHELL_SANDBOX_TOKEN_FILE: `${SECRET_DIR}/token`,
      OPENSHELL_ENDPOINT: endpoint,
      OPENSHELL_BUNDLE_DIR: BUNDLE_MOUNT,
      OPENSHELL_ISOLATION: this.#o.isolation,
      OPENSHELL_WORKDIR: config.WorkingDir || '/workspace',
      // Host networking shares the host's ports: each proxy takes a free one instead of :3128.
      ...(this.#o.network === 'host' ? { OPENSHELL_PROXY_LISTEN: '127.0.0.1:0' } : {}),
    };
    const name = containerName(this.#tag, spec.name);
    await this.#removeOrphan(name, spec.id);
    const container = await this.#docker.createContainer({
      name,
      Image: image,
      Entrypoint: supervisorArgv(bundle.manifest, BUNDLE_MOUNT, SUPERVISOR_NODE_FLAGS, command),
      Cmd: [],
      Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
      WorkingDir: config.WorkingDir || '/workspace',
      // The supervisor needs root for the confinement; the sandbox's own processes never run as root.
      User: '0:0',
      Labels: { [LABEL_ID]: spec.id, [LABEL_NAME]: spec.name, [LABEL_GATEWAY]: this.#tag },
      HostConfig: {
        Binds: binds,
        NetworkMode: this.#o.network,
        CapDrop: ['ALL'],
        CapAdd: [...CONFINEMENT_CAPABILITIES],
        Privileged: false,
        // Docker's default seccomp profile refuses pivot_root (bwrap needs it): see docker-seccomp.ts.
        SecurityOpt: [`seccomp=${SECCOMP}`, 'no-new-privileges:true'],
        RestartPolicy: { Name: 'no' },
        ...limits,
      },
    });
    try {
      await container.start();
    } catch (err) {
      await container.remove({ force: true }).catch(() => undefined);
      throw new Error(`container for ${spec.name} did not start: ${engineMessage(err)}`, { cause: err });
    }
    this.#log.info({ sandboxId: spec.id, container: container.id.slice(0, 12), image }, 'container started');
  }

  /**
   * A container of this gateway that holds the name but belongs to another
   * sandbox id is an orphan (names are unique among live sandboxes: its
   * sandbox is gone from the store, e.g. a state dir restored from a backup).
   */
  async #removeOrphan(name: string, id: string): Promise<void> {
    let info: Docker.ContainerInspectInfo;
    try {
      info = await this.#docker.getContainer(name).inspect();
    } catch (err) {
      if (statusOf(err) === 404) return;
      throw err;
    }
    const labels = info.Config.Labels ?? {};
    if (labels[LABEL_GATEWAY] !== this.#tag) throw new Error(`container name ${name} is taken by a container this gateway does not own`);
    if (labels[LABEL_ID] === id) return;
    this.#log.warn({ container: info.Id.slice(0, 12), orphanOf: labels[LABEL_ID] }, 'removing an orphaned sandbox container');
    this.#deleting.add(labels[LABEL_ID] ?? '');
    try {
      await this.#docker.getContainer(info.Id).remove({ force: true, v: true });
    } finally {
      this.#deleting.delete(labels[LABEL_ID] ?? '');
    }
  }

  /** `resources` as container limits; what the engine would refuse is refused here, naming the field. */
  async #hostConfigLimits(spec: SandboxSpec): Promise<Partial<Docker.HostConfig>> {
    const r = spec.resources;
    const limits: Partial<Docker.HostConfig> = {};
    if (r.memoryMb !== undefined) {
      const bytes = r.memoryMb * 1024 * 1024;
      if (bytes < MIN_MEMORY_BYTES) throw new Error(`resources.memoryMb: at least ${MIN_MEMORY_BYTES / 1024 / 1024} MB`);
      // No swap beyond the limit: a memory hog is killed at it.
      Object.assign(limits, { Memory: bytes, MemorySwap: bytes });
    }
    if (r.pids !== undefined) limits.PidsLimit = r.pids;
    if (r.cpus !== undefined || r.diskMb !== undefined) {
      const info = await this.#engineInfo();
      if (r.cpus !== undefined) {
        if (r.cpus > info.cpus) throw new Error(`resources.cpus: the engine has ${info.cpus} CPUs, asked for ${r.cpus}`);
        limits.NanoCpus = Math.round(r.cpus * 1e9);
      }
      if (r.diskMb !== undefined) {
        if (!sizedStorage(info)) {
          throw new Error(
            `resources.diskMb: the engine's storage driver (${info.storageDriver} on ${info.backingFs || 'unknown'}) cannot limit a container's disk ` +
              '(overlay2 needs xfs with pquota; btrfs, zfs and devicemapper can)',
          );
        }
        limits.StorageOpt = { size: `${r.diskMb}M` };
      }
    }
    return limits;
  }

  async delete(id: string): Promise<void> {
    this.#deleting.add(id);
    try {
      for (const c of await this.#containers(id)) {
        try {
          await this.#docker.getContainer(c.Id).remove({ force: true, v: true });
        } catch (err) {
          if (statusOf(err) !== 404) throw err;
        }
      }
      await rm(this.sandboxDir(id), { recursive: true, force: true });
    } finally {
      this.#deleting.delete(id);
      this.#oom.delete(id);
    }
  }

  async list(): Promise<BackendState[]> {
    const states: BackendState[] = [];
    for (const c of await this.#containers()) {
      const id = c.Labels?.[LABEL_ID];
      if (!id) continue;
      if (c.State === 'running') {
        states.push({ id, state: 'Running', message: `container ${c.Id.slice(0, 12)}` });
      } else {
        states.push({ id, state: 'Error', message: await this.#exitMessage(c.Id) });
      }
    }
    return states;
  }

  watch(listener: (state: BackendState) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  async close(): Promise<void> {
    // Containers keep running: the next gateway on this state dir adopts them.
    this.#closed = true;
    this.#listeners.clear();
    this.#abort.abort();
    const events = this.#events as (NodeJS.ReadableStream & { destroy?: () => void }) | undefined;
    events?.destroy?.();
  }

  /** This gateway's containers (of one sandbox, when given). */
  async #containers(id?: string): Promise<Docker.ContainerInfo[]> {
    const label = [`${LABEL_GATEWAY}=${this.#tag}`];
    if (id) label.push(`${LABEL_ID}=${id}`);
    return this.#docker.listContainers({ all: true, filters: { label } });
  }

  async #image(image: string): Promise<Docker.ImageInspectInfo | null> {
    try {
      return await this.#docker.getImage(image).inspect();
    } catch (err) {
      if (statusOf(err) === 404) return null;
      throw err;
    }
  }

  async #pull(image: string): Promise<void> {
    const timeoutMs = this.#o.pullTimeoutMs ?? 600_000;
    const signal = AbortSignal.any([this.#abort.signal, AbortSignal.timeout(timeoutMs)]);
    const stream = (await this.#docker.pull(image, { abortSignal: signal })) as NodeJS.ReadableStream;
    await new Promise<void>((resolve, reject) => {
      signal.addEventListener('abort', () => reject(new Error(`pull did not finish in ${timeoutMs} ms`)), { once: true });
      this.#docker.modem.followProgress(stream, (err: Error | null, output: Array<{ error?: string }>) => {
        const failed = output?.find((o) => o.error);
        if (err) reject(err);
        else if (failed) reject(new Error(failed.error));
        else resolve();
      });
    });
  }

  async #exitMessage(containerId: string, sandboxId?: string): Promise<string> {
    try {
      const { State } = await this.#docker.getContainer(containerId).inspect();
      const oom = State.OOMKilled || (sandboxId !== undefined && this.#oom.has(sandboxId));
      const parts = [`container exited with code ${State.ExitCode}`];
      if (oom) parts.push('OOMKilled: the memory limit was reached');
      if (State.Error) parts.push(State.Error);
      return parts.join('; ');
    } catch (err) {
      return statusOf(err) === 404 ? 'container removed' : `container state unknown: ${engineMessage(err)}`;
    }
  }

  /**
   * Follows the engine's container events for this gateway's containers,
   * reconnecting with backoff when the stream ends (an engine restart);
   * deaths missed meanwhile are found by a list after reconnecting.
   */
  async #watchEvents(attempt: number): Promise<void> {
    if (this.#closed) return;
    const since = Math.floor(Date.now() / 1000);
    try {
      const stream = (await this.#docker.getEvents({
        filters: { type: ['container'], event: ['die', 'oom', 'destroy'], label: [`${LABEL_GATEWAY}=${this.#tag}`] },
        abortSignal: this.#abort.signal,
      } as Docker.GetEventsOptions)) as NodeJS.ReadableStream;
      this.#events = stream;
      if (attempt > 0) void this.#resync();
      attempt = 0;
      const lines = createInterface({ input: stream as NodeJS.ReadableStream & AsyncIterable<string> });
      for await (const line of lines) {
        if (line.trim()) this.#onEvent(JSON.parse(line) as EngineEvent);
      }
    } catch (err) {
      if (this.#closed) return;
      this.#log.warn({ err, since }, 'docker event stream failed');
    }
    if (this.#closed) return;
    const delay = Math.min(100 * 2 ** attempt, 5000);
    setTimeout(() => void this.#watchEvents(attempt + 1), delay).unref();
  }

  async #resync(): Promise<void> {
    for (const state of await this.list().catch(() => [])) {
      if (state.state !== 'Running' && !this.#deleting.has(state.id)) this.#emit(state);
    }
  }

  #onEvent(event: EngineEvent): void {
    const id = event.Actor?.Attributes?.[LABEL_ID];
    if (!id || this.#deleting.has(id) || this.#closed) return;
    const action = event.Action ?? event.status;
    if (action === 'oom') {
      this.#oom.add(id);
    } else if (action === 'die') {
      void this.#exitMessage(event.Actor?.ID ?? event.id ?? '', id).then((message) => {
        if (this.#deleting.has(id) || this.#closed) return;
        this.#log.warn({ sandboxId: id, message }, 'container died');
        this.#emit({ id, state: 'Error', message });
      });
    } else if (action === 'destroy') {
      this.#emit({ id, state: 'Gone', message: 'container removed outside the gateway' });
    }
  }

  #emit(state: BackendState): void {
    for (const listener of this.#listeners) listener(state);
  }

  #engineInfo(): Promise<EngineInfo> {
    this.#info ??= this.#docker.info().then((info: Record<string, unknown>) => {
      const status = (info.DriverStatus as [string, string][] | null) ?? [];
      return {
        cpus: Number(info.NCPU) || 1,
        storageDriver: String(info.Driver ?? ''),
        backingFs: status.find(([k]) => k === 'Backing Filesystem')?.[1] ?? '',
      };
    });
    return this.#info;
  }

  #pathMap(): Promise<PathMap> {
    this.#paths ??= ownContainerMounts(this.#docker).then((mounts) => new PathMap(mounts));
    this.#paths.catch(() => (this.#paths = undefined));
    return this.#paths;
  }

  /**
   * The bundle as the engine sees it. On the engine's host that is the
   * package's own `dist/bundle`; a gateway in a container (docker compose)
   * copies it into its state volume first, once per bundle build, since the
   * engine cannot mount a path of another container's image.
   */
  #bundleReady(): Promise<{ manifest: BundleManifest; hostDir: string }> {
    this.#bundle ??= (async () => {
      const src = this.#o.bundleDir ?? bundleDir();
      const manifestPath = join(src, BUNDLE_MANIFEST);
      if (!existsSync(manifestPath)) throw new Error(`supervisor bundle not found at ${src} (run npm run build)`);
      const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as BundleManifest;
      const paths = await this.#pathMap();
      if (paths.covers(src)) return { manifest, hostDir: paths.toEngine(src) };
      const stamp = bundleStamp(src, manifest);
      const copy = join(this.#o.stateDir, 'bundle', stamp);
      if (!existsSync(join(copy, BUNDLE_MANIFEST))) {
        const tmp = `${copy}.tmp-${process.pid}`;
        cpSync(src, tmp, { recursive: true });
        await rm(copy, { recursive: true, force: true });
        const { rename } = await import('node:fs/promises');
        await rename(tmp, copy);
        this.#log.info({ from: src, to: copy }, 'supervisor bundle copied where the engine can mount it');
      }
      return { manifest, hostDir: paths.toEngine(copy) };
    })();
    this.#bundle.catch(() => (this.#bundle = undefined));
    return this.#bundle;
  }
}

interface EngineEvent {
  status?: string;
  id?: string;
  Action?: string;
  Actor?: { ID?: string; Attributes?: Record<string, string> };
}

interface Mount {
  source: string;
  destination: string;
}

/**
 * Paths of this process's filesystem as the engine sees them. On the
 * engine's host they are the same; in a container (the gateway under docker
 * compose) a path under one of the container's mounts maps to the mount's
 * source, and a path under none has no engine-side name.
 */
export class PathMap {
  readonly #mounts: Mount[] | null;

  /** `mounts` null: not in a container, every path is its own engine path. */
  constructor(mounts: Mount[] | null) {
    this.#mounts = mounts && [...mounts].sort((a, b) => b.destination.length - a.destination.length);
  }

  #find(path: string): Mount | undefined {
    const abs = resolve(path);
    return this.#mounts?.find((m) => abs === m.destination || abs.startsWith(m.destination.endsWith(sep) ? m.destination : m.destination + sep));
  }

  covers(path: string): boolean {
    return this.#mounts === null || this.#find(path) !== undefined;
  }

  toEngine(path: string): string {
    const abs = resolve(path);
    if (this.#mounts === null) return abs;
    const mount = this.#find(abs);
    if (!mount) throw new Error(`${abs} is on no mount of the gateway's container: the engine cannot bind it into sandboxes`);
    const rest = relative(mount.destination, abs);
    return rest ? join(mount.source, rest) : mount.source;
  }
}

/**
 * The mounts of the container this process runs in, from the engine, or null
 * when it runs on the engine's host (no container id in its mountinfo).
 */
async function ownContainerMounts(docker: Docker): Promise<Mount[] | null> {
  const id = ownContainerId();
  if (!id) return null;
  try {
    const info = await docker.getContainer(id).inspect();
    return info.Mounts.map((m) => ({ source: m.Source, destination: m.Destination }));
  } catch (err) {
    // A container of another engine (or none of this one): treat paths as the engine's own.
    if (statusOf(err) === 404) return null;
    throw err;
  }
}

/** Docker and Podman bind /etc/hostname from `…/containers/<id>/…`. */
export function ownContainerId(mountinfo = readMountinfo()): string | null {
  for (const line of mountinfo.split('\n')) {
    const fields = line.split(' ');
    if (fields[4] !== '/etc/hostname') continue;
    const match = /\/containers\/([0-9a-f]{64})\//.exec(fields[3] ?? '');
    if (match) return match[1] as string;
  }
  return null;
}

function readMountinfo(): string {
  try {
    return readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return '';
  }
}

/** Names one bundle build: the manifest, and the sizes and times of the entry and node. */
function bundleStamp(dir: string, manifest: BundleManifest): string {
  const hash = createHash('sha256').update(JSON.stringify(manifest));
  for (const file of [manifest.entry, manifest.node]) {
    const st = statSync(join(dir, file));
    hash.update(`${file}:${st.size}:${st.mtimeMs}`);
  }
  return hash.digest('hex').slice(0, 16);
}

/** dockerode's connection options from `--docker-host`. */
export function dockerConnection(host: string): Docker.DockerOptions {
  if (host.startsWith('unix://')) return { socketPath: host.slice('unix://'.length) };
  if (host.startsWith('/')) return { socketPath: host };
  const url = new URL(host.replace(/^tcp:/, 'http:'));
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`--docker-host ${host}: expected unix://, tcp:// or http(s)://`);
  return { host: url.hostname, port: Number(url.port) || (url.protocol === 'https:' ? 2376 : 2375), protocol: url.protocol.slice(0, -1) as 'http' | 'https' };
}

export function gatewayTag(stateDir: string): string {
  return createHash('sha256').update(resolve(stateDir)).digest('hex').slice(0, 12);
}

/** `openshell-<gateway>-<sandbox>`: unique per engine, and within Docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]+`. */
export function containerName(tag: string, name: string): string {
  return `openshell-${tag.slice(0, 8)}-${name}`;
}

function sizedStorage(info: EngineInfo): boolean {
  if (SIZED_STORAGE.has(info.storageDriver)) return true;
  return info.storageDriver === 'overlay2' && info.backingFs === 'xfs';
}

function envObject(list: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const entry of list) {
    const eq = entry.indexOf('=');
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  return env;
}

function statusOf(err: unknown): number | undefined {
  return (err as { statusCode?: number }).statusCode;
}

/** The engine's own words: dockerode puts the JSON body's message in `json.message`. */
function engineMessage(err: unknown): string {
  const e = err as { json?: { message?: string }; message?: string };
  return e.json?.message ?? e.message ?? String(err);
}


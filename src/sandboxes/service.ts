import { EventEmitter } from 'node:events';
import type { Config } from '../config.js';
import type { ComputeDriver } from '../drivers/types.js';
import { OpenShellError, invalidArgument, sandboxNotFound } from '../errors.js';
import type { Logger } from '../log.js';
import type { CreateSandboxBody, Condition, MainProcess, Phase, Sandbox } from '../schemas/sandbox.js';
import { DuplicateError, type SandboxRecord, type SandboxStore } from '../store/index.js';
import { generateName, generateSandboxId, generateSuffixedName } from './names.js';
import { generateToken, hashToken } from './tokens.js';

export interface SandboxServiceOptions {
  config: Config;
  store: SandboxStore;
  driver: ComputeDriver;
  log: Logger;
  /** Whether a supervisor session is registered for the sandbox now. */
  hasSession: (sandboxId: string) => boolean;
  /** Validates a network policy; throws an INVALID_ARGUMENT naming the field. */
  validatePolicy?: (policy: unknown) => unknown;
  /** The URL supervisors dial (resolved once the gateway listens). */
  sandboxEndpoint: () => string;
}

interface ServiceEvents {
  change: [record: SandboxRecord];
  deleted: [record: SandboxRecord];
}

type Patch = Partial<Omit<SandboxRecord, 'id' | 'resourceVersion'>>;

/**
 * Sandboxes: create, list, delete, TTL expiry, and gateway-owned readiness.
 * Every write is a compare-and-set on the record's resource version, so
 * concurrent writers (session events, the driver, API calls) never lose one
 * another's updates.
 */
export class SandboxService {
  readonly #o: SandboxServiceOptions;
  readonly #log: Logger;
  readonly #events = new EventEmitter<ServiceEvents>();
  readonly #deletes = new Map<string, Promise<void>>();
  /** Token hash → sandbox id of sandboxes that exist; entries go when a sandbox is deleted. */
  readonly #idByTokenHash = new Map<string, string>();
  #ttlTimer: NodeJS.Timeout | undefined;
  #unwatch: (() => void) | undefined;
  #closed = false;

  constructor(opts: SandboxServiceOptions) {
    this.#o = opts;
    this.#log = opts.log.child({ component: 'sandboxes' });
    this.#events.setMaxListeners(0);
  }

  /** Reconciles stored sandboxes with the driver after a (re)start, then starts the TTL sweeper. */
  async start(): Promise<void> {
    this.#unwatch = this.#o.driver.watch((state) => {
      if (state.state === 'Error' || state.state === 'Gone') {
        void this.markError(state.id, 'WorkloadFailed', state.message).catch((err: unknown) =>
          this.#log.error({ err, sandboxId: state.id }, 'could not record a driver failure'),
        );
      }
    });
    const backend = new Map((await this.#o.driver.list()).map((s) => [s.id, s]));
    for (const record of await this.#o.store.list()) {
      if (record.driver !== this.#o.driver.name) continue;
      if (record.phase === 'Deleting') {
        void this.#finishDelete(record);
        continue;
      }
      const state = backend.get(record.id);
      if (!state || state.state !== 'Running') {
        await this.markError(record.id, 'WorkloadLost', state?.message ?? 'workload not found after gateway restart');
      } else {
        await this.reconcile(record.id);
      }
    }
    this.#ttlTimer = setInterval(() => void this.#sweepExpired(), this.#o.config.ttlSweepMs).unref();
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#ttlTimer);
    this.#unwatch?.();
    await Promise.allSettled(this.#deletes.values());
  }

  on<E extends keyof ServiceEvents>(event: E, listener: (...args: ServiceEvents[E]) => void): () => void {
    this.#events.on(event, listener as never);
    return () => this.#events.off(event, listener as never);
  }

  async create(body: CreateSandboxBody): Promise<Sandbox> {
    const policy = body.policy === undefined ? null : this.#validatePolicy(body.policy);
    const token = generateToken();
    const now = new Date().toISOString();
    const base = {
      id: generateSandboxId(),
      driver: this.#o.driver.name,
      image: body.image ?? null,
      command: body.command ?? [],
      env: body.env ?? {},
      labels: body.labels ?? {},
      policy,
      policyVersion: 1,
      tokenHash: hashToken(token),
      phase: 'Provisioning' as Phase,
      condition: condition('False', 'Provisioning', 'waiting for the supervisor to connect', now),
      mainProcess: { state: 'Pending', exitCode: null, signal: null } satisfies MainProcess,
      createdAt: now,
      expiresAt: body.ttlSeconds ? new Date(Date.now() + body.ttlSeconds * 1000).toISOString() : null,
      resources: body.resources ?? {},
    };
    const record = await this.#insert(base, body.name);
    this.#events.emit('change', record);
    this.#log.info({ sandboxId: record.id, name: record.name }, 'sandbox created');
    try {
      await this.#o.driver.create({
        id: record.id,
        name: record.name,
        image: record.image,
        command: record.command,
        env: record.env,
        token,
        endpoint: this.#o.sandboxEndpoint(),
        resources: record.resources ?? {},
      });
    } catch (err) {
      this.#log.error({ err, sandboxId: record.id }, 'driver could not create the sandbox');
      await this.markError(record.id, 'CreateFailed', (err as Error).message);
    }
    // The supervisor may have registered before the row existed (or while the driver ran).
    const current = (await this.reconcile(record.id)) ?? record;
    return toSandbox(current);
  }

  async list(labels?: Record<string, string>): Promise<Sandbox[]> {
    return (await this.#o.store.list({ labels })).map(toSandbox);
  }

  async get(name: string): Promise<Sandbox> {
    return toSandbox(await this.getRecord(name));
  }

  async getRecord(name: string): Promise<SandboxRecord> {
    const record = await this.#o.store.getByName(name);
    if (!record) throw sandboxNotFound(name);
    return record;
  }

  async getByTokenHash(tokenHash: string): Promise<SandboxRecord | null> {
    return this.#o.store.getByTokenHash(tokenHash);
  }

  /**
   * The id of the sandbox a token hash belongs to, from memory after the
   * first lookup (relay claims run once per exec). A sandbox's token never
   * changes; its entry is dropped when the sandbox is removed.
   */
  async sandboxIdByTokenHash(tokenHash: string): Promise<string | null> {
    const cached = this.#idByTokenHash.get(tokenHash);
    if (cached !== undefined) return cached;
    const record = await this.#o.store.getByTokenHash(tokenHash);
    if (!record) return null;
    // The row may have been removed while we awaited; only cache a sandbox not being deleted.
    if (!this.#deletes.has(record.id) && record.phase !== 'Deleting') {
      if (this.#idByTokenHash.size >= 100_000) this.#idByTokenHash.clear();
      this.#idByTokenHash.set(tokenHash, record.id);
    }
    return record.id;
  }

  #forgetToken(id: string): void {
    for (const [hash, sid] of this.#idByTokenHash) if (sid === id) this.#idByTokenHash.delete(hash);
  }

  /** Marks the sandbox Deleting and answers; the driver removes it in the background. */
  async delete(name: string): Promise<Sandbox> {
    const record = await this.getRecord(name);
    const updated = await this.#mutate(record.id, (r) =>
      r.phase === 'Deleting'
        ? null
        : { phase: 'Deleting', condition: condition('False', 'Deleting', 'sandbox is being deleted', undefined, r) },
    );
    const target = updated ?? record;
    this.#forgetToken(record.id);
    void this.#finishDelete(target);
    return toSandbox(target);
  }

  /** Deletes every sandbox of this driver (a gateway on an in-memory store, stopping); resolves once all are removed. */
  async deleteAll(): Promise<void> {
    const records = (await this.#o.store.list()).filter((r) => r.driver === this.#o.driver.name);
    await Promise.allSettled(records.map((r) => this.delete(r.name)));
    await Promise.allSettled(this.#deletes.values());
  }

  /** Resolves once a delete in progress has removed the sandbox. */
  async deleted(id: string): Promise<void> {
    await this.#deletes.get(id);
  }

  /** Applies readiness: Ready exactly while a session is registered; Error and Deleting are terminal. */
  async reconcile(id: string): Promise<SandboxRecord | null> {
    return this.#mutate(id, (r) => {
      if (r.phase === 'Error' || r.phase === 'Deleting') return null;
      if (this.#o.hasSession(id)) {
        if (r.phase === 'Ready') return null;
        return { phase: 'Ready', condition: condition('True', 'SupervisorConnected', 'supervisor session connected') };
      }
      if (r.phase !== 'Ready') return null;
      return {
        phase: 'Provisioning',
        condition: condition('False', 'SupervisorDisconnected', 'supervisor session ended; waiting for it to reconnect'),
      };
    });
  }

  async markError(id: string, reason: string, message: string): Promise<SandboxRecord | null> {
    return this.#mutate(id, (r) =>
      r.phase === 'Error' || r.phase === 'Deleting' ? null : { phase: 'Error', condition: condition('False', reason, message) },
    );
  }

  /**
   * Records how the supervisor confined the sandbox (condition `Isolated`). A
   * confinement that failed (not one turned off by `--isolation none`) puts
   * the sandbox in Error: nothing may run in it.
   */
  async setIsolation(id: string, state: { ok: boolean; mode: string; message: string }): Promise<SandboxRecord | null> {
    const reason = state.ok ? state.mode : state.mode === 'none' ? 'Disabled' : 'ConfinementFailed';
    const updated = await this.#mutate(id, (r) => {
      const prev = r.isolated;
      if (prev && prev.reason === reason && prev.message === state.message) return null;
      const now = new Date().toISOString();
      const status = state.ok ? 'True' : 'False';
      const isolated: Condition = {
        type: 'Isolated',
        status,
        reason,
        message: state.message,
        lastTransitionTime: prev && prev.status === status ? prev.lastTransitionTime : now,
      };
      return { isolated };
    });
    if (!state.ok && state.mode !== 'none') {
      return this.markError(id, 'ConfinementFailed', `the sandbox could not be confined: ${state.message}`);
    }
    if (!state.ok) this.#log.warn({ sandboxId: id }, 'sandbox runs unconfined (--isolation none)');
    return updated;
  }

  async setMainProcess(id: string, mainProcess: MainProcess): Promise<SandboxRecord | null> {
    return this.#mutate(id, () => ({ mainProcess }));
  }

  /** Stores an already validated policy (see PolicyService) at `version` (at least one past the current). */
  async setPolicy(id: string, policy: unknown, version?: number): Promise<SandboxRecord> {
    const updated = await this.#mutate(id, (r) => ({
      policy,
      policyVersion: Math.max(version ?? 0, r.policyVersion + 1),
    }));
    if (!updated) throw new OpenShellError('SANDBOX_NOT_FOUND', `sandbox ${id} not found`);
    return updated;
  }

  /**
   * Yields the sandbox on every change, starting with its current state; ends
   * when the sandbox is gone or `signal` aborts.
   */
  async *watch(name: string, signal: AbortSignal): AsyncGenerator<Sandbox> {
    const first = await this.getRecord(name);
    const queue: Array<SandboxRecord | null> = [];
    let wake: (() => void) | undefined;
    const push = (item: SandboxRecord | null) => {
      queue.push(item);
      wake?.();
    };
    const offChange = this.on('change', (r) => r.id === first.id && push(r));
    const offDeleted = this.on('deleted', (r) => r.id === first.id && push(null));
    const onAbort = () => wake?.();
    signal.addEventListener('abort', onAbort);
    try {
      yield toSandbox(first);
      let lastVersion = first.resourceVersion;
      while (!signal.aborted) {
        if (queue.length === 0) await new Promise<void>((r) => (wake = r));
        wake = undefined;
        for (const item of queue.splice(0)) {
          if (item === null) return;
          if (item.resourceVersion <= lastVersion) continue;
          lastVersion = item.resourceVersion;
          yield toSandbox(item);
        }
      }
    } finally {
      offChange();
      offDeleted();
      signal.removeEventListener('abort', onAbort);
    }
  }

  #validatePolicy(policy: unknown): unknown {
    if (policy === null) return null;
    if (typeof policy !== 'object' || Array.isArray(policy)) throw invalidArgument('policy', 'must be an object');
    return this.#o.validatePolicy ? this.#o.validatePolicy(policy) : policy;
  }

  async #insert(base: Omit<SandboxRecord, 'resourceVersion' | 'name'>, name: string | undefined): Promise<SandboxRecord> {
    if (name !== undefined) {
      try {
        return await this.#o.store.insert({ ...base, name });
      } catch (err) {
        if (err instanceof DuplicateError) {
          throw new OpenShellError('ALREADY_EXISTS', `sandbox "${name}" already exists`, { details: { field: 'name', name } });
        }
        throw err;
      }
    }
    for (let attempt = 0; ; attempt++) {
      const generated = attempt < 5 ? generateName() : generateSuffixedName();
      try {
        return await this.#o.store.insert({ ...base, name: generated });
      } catch (err) {
        if (!(err instanceof DuplicateError) || attempt >= 10) throw err;
      }
    }
  }

  /** Compare-and-set loop: `fn` sees the current record and returns a patch, or null for no change. */
  async #mutate(id: string, fn: (r: SandboxRecord) => Patch | null): Promise<SandboxRecord | null> {
    for (;;) {
      const current = await this.#o.store.get(id);
      if (!current) return null;
      const patch = fn(current);
      if (!patch) return current;
      const updated = await this.#o.store.update(id, current.resourceVersion, patch);
      if (updated) {
        if (patch.phase && patch.phase !== current.phase) {
          this.#log.info({ sandboxId: id, phase: patch.phase, reason: updated.condition.reason }, 'sandbox phase');
        }
        this.#events.emit('change', updated);
        return updated;
      }
    }
  }

  #finishDelete(record: SandboxRecord): Promise<void> {
    const existing = this.#deletes.get(record.id);
    if (existing) return existing;
    const run = (async () => {
      try {
        await this.#o.driver.delete(record.id);
      } catch (err) {
        this.#log.error({ err, sandboxId: record.id }, 'driver could not delete the sandbox');
        await this.#mutate(record.id, () => ({
          condition: condition('False', 'DeleteFailed', (err as Error).message),
        }));
        return;
      }
      await this.#o.store.delete(record.id);
      this.#forgetToken(record.id);
      this.#log.info({ sandboxId: record.id, name: record.name }, 'sandbox deleted');
      this.#events.emit('deleted', record);
    })().finally(() => this.#deletes.delete(record.id));
    this.#deletes.set(record.id, run);
    return run;
  }

  async #sweepExpired(): Promise<void> {
    if (this.#closed) return;
    const now = Date.now();
    for (const record of await this.#o.store.list()) {
      if (record.expiresAt && Date.parse(record.expiresAt) <= now && record.phase !== 'Deleting') {
        this.#log.info({ sandboxId: record.id, name: record.name }, 'sandbox TTL expired');
        await this.delete(record.name).catch((err: unknown) =>
          this.#log.error({ err, sandboxId: record.id }, 'TTL delete failed'),
        );
      }
    }
  }
}

function condition(
  status: Condition['status'],
  reason: string,
  message: string,
  time?: string,
  previous?: SandboxRecord,
): Condition {
  const lastTransitionTime =
    previous && previous.condition.status === status ? previous.condition.lastTransitionTime : (time ?? new Date().toISOString());
  return { type: 'Ready', status, reason, message, lastTransitionTime };
}

/** The API view of a record: no token hash, no policy body, env names without their values. */
export function toSandbox(r: SandboxRecord): Sandbox {
  return {
    id: r.id,
    name: r.name,
    phase: r.phase,
    driver: r.driver,
    image: r.image,
    command: r.command,
    labels: r.labels,
    env: Object.keys(r.env),
    createdAt: r.createdAt,
    expiresAt: r.expiresAt,
    policyVersion: r.policyVersion,
    conditions: r.isolated ? [r.condition, r.isolated] : [r.condition],
    mainProcess: r.mainProcess,
    resources: r.resources ?? {},
  };
}

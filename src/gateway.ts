import type { Config } from './config.js';
import type { ComputeDriver } from './drivers/types.js';
import type { Logger } from './log.js';
import { GatewayMetrics } from './metrics.js';
import type { SupervisorToGateway } from './protocol/control.js';
import { RelayBroker } from './relay/broker.js';
import type { SupervisorSession } from './relay/control.js';
import { ExecService } from './relay/exec-service.js';
import { SessionRegistry } from './relay/sessions.js';
import { SandboxLogs } from './sandboxes/logs.js';
import { PolicyService, validatePolicy } from './sandboxes/policy.js';
import { SandboxService } from './sandboxes/service.js';
import { isInMemoryStore, openStore, type SandboxStore } from './store/index.js';

export interface GatewayDeps {
  store?: SandboxStore;
  /** The compute driver; buildApp makes the one `--driver` names (drivers/index.ts). */
  driver?: ComputeDriver;
  /** Validates network policies (the egress policy engine). */
  validatePolicy?: (policy: unknown) => unknown;
}

/**
 * The gateway's domain objects, wired together and owned here: the store,
 * the compute driver, the session registry and the sandbox service. Plain
 * TypeScript; the Fastify app only calls into it.
 */
export class Gateway {
  readonly config: Config;
  readonly log: Logger;
  readonly store: SandboxStore;
  readonly driver: ComputeDriver;
  readonly sessions = new SessionRegistry<SupervisorSession>();
  readonly sandboxes: SandboxService;
  readonly broker: RelayBroker;
  readonly execs: ExecService;
  readonly policies: PolicyService;
  readonly logs = new SandboxLogs();
  readonly metrics: GatewayMetrics;
  #endpoint = '';
  #socketPath = '';
  readonly #unsubscribe: Array<() => void> = [];

  constructor(config: Config, log: Logger, deps: GatewayDeps = {}) {
    this.config = config;
    this.log = log;
    this.store = deps.store ?? openStore(config.db);
    if (!deps.driver) throw new Error('Gateway needs a compute driver (see createDriver)');
    this.driver = deps.driver;
    this.sandboxes = new SandboxService({
      config,
      store: this.store,
      driver: this.driver,
      log,
      hasSession: (id) => this.sessions.get(id) !== undefined,
      validatePolicy: deps.validatePolicy ?? validatePolicy,
      sandboxEndpoint: () => this.endpoint,
    });
    this.metrics = new GatewayMetrics({ sessions: () => this.sessions, broker: () => this.broker });
    this.broker = new RelayBroker({ sessions: this.sessions, config, log, metrics: this.metrics.relay });
    this.execs = new ExecService({
      broker: this.broker,
      sandboxes: this.sandboxes,
      log,
      metrics: this.metrics.exec,
      resumeWindowMs: config.execResumeWindowMs,
    });
    this.policies = new PolicyService(this.sandboxes, this.sessions);
    const reconcile = (sandboxId: string) =>
      void this.sandboxes.reconcile(sandboxId).catch((err: unknown) => this.log.error({ err, sandboxId }, 'readiness update failed'));
    this.#unsubscribe.push(
      this.sessions.on('connected', (session) => reconcile(session.sandboxId)),
      this.sessions.on('disconnected', (sandboxId) => reconcile(sandboxId)),
      this.sandboxes.on('deleted', (record) => this.logs.forget(record.id)),
    );
  }

  async start(): Promise<void> {
    await this.sandboxes.start();
  }

  /**
   * What supervisors dial: `--sandbox-endpoint`, else the gateway's Unix
   * socket (`unix:/path`, process driver), else the gateway's own URL.
   */
  get endpoint(): string {
    return this.config.sandboxEndpoint || (this.#socketPath ? `unix:${this.#socketPath}` : this.#endpoint);
  }

  setListenUrl(url: string): void {
    this.#endpoint = url;
  }

  /** Supervisors started from now on dial this Unix socket. */
  setSupervisorSocket(path: string): void {
    this.#socketPath = path;
  }

  onSupervisorMessage(session: SupervisorSession, message: SupervisorToGateway): void {
    switch (message.type) {
      case 'relayOpenResult':
        this.broker.onOpenResult(session, message);
        break;
      case 'relayClose':
        this.broker.onRelayClose(session, message.channelId, message.reason);
        break;
      case 'policyApplied':
        this.policies.onApplied(session, message);
        break;
      case 'log':
        this.logs.append(session.sandboxId, message.lines);
        break;
      case 'isolation':
        void this.sandboxes
          .setIsolation(session.sandboxId, {
            ok: message.ok === true,
            mode: typeof message.mode === 'string' ? message.mode : 'unknown',
            message: typeof message.message === 'string' ? message.message : '',
          })
          .catch((err: unknown) => this.log.error({ err }, 'could not record the isolation state'));
        break;
      case 'mainProcess':
        void this.sandboxes
          .setMainProcess(session.sandboxId, {
            state: message.state,
            exitCode: typeof message.exitCode === 'number' ? message.exitCode : null,
            signal: typeof message.signal === 'string' ? message.signal : null,
          })
          .catch((err: unknown) => this.log.error({ err }, 'could not record the main process state'));
        break;
      default:
        break;
    }
  }

  /** Ends every supervisor session (the supervisors reconnect to the next gateway). */
  closeSessions(): void {
    this.broker.close();
    this.sessions.closeAll(1001, 'gateway shutting down');
  }

  async close(): Promise<void> {
    for (const off of this.#unsubscribe.splice(0)) off();
    this.broker.close();
    // No later gateway can adopt what an in-memory store forgets: its sandboxes go with it.
    if (isInMemoryStore(this.config.db)) await this.sandboxes.deleteAll();
    await this.sandboxes.close();
    await this.driver.close();
    await this.store.close();
  }
}

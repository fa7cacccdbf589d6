import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import WebSocket, { createWebSocketStream } from 'ws';
import type { Logger } from '../log.js';
import type { GatewayToSupervisor, IsolationMessage, MainProcessMessage, WelcomeMessage } from '../protocol/control.js';
import type { Resources } from '../schemas/sandbox.js';
import { closeWebSocket, keepAlive } from '../relay/heartbeat.js';
import { ControlClient, needsMasking, wsUrl } from './control-client.js';
import type { Confinement } from './isolation/confinement.js';
import { SANDBOX_HOME, SANDBOX_ROOT, SANDBOX_USER, SANDBOX_WORKSPACE } from './isolation/spec.js';
import { createSupervisorLogger, LogRing } from './log.js';

export const SUPERVISOR_VERSION = '0.1.0';
/** How long the entrypoint waits for a first session before starting anyway. */
const EGRESS_GRACE_MS = 1000;

export interface SupervisorOptions {
  sandboxId: string;
  token: string;
  endpoint: string;
  /** The agent's entrypoint; empty = none. */
  command: string[];
  /** The environment every process in the sandbox gets (before the proxy variables). */
  sandboxEnv: Record<string, string>;
  workdir: string;
  sshSocket: string;
  spoolDir: string;
  /** `host:port` for the egress proxy (`127.0.0.1:0` = a free port). */
  proxyListen: string;
  /** Idle timeout of plain HTTP keep-alive connections through the proxy (never tunnels or upgrades). */
  proxyIdleTimeoutMs?: number;
  /** The egress proxy's limit on client connections open at once (0 = none); its default when unset. */
  proxyMaxConnections?: number;
  /** Where the entrypoint's stdout/stderr go (a log file descriptor); default: the supervisor's own. */
  stdioFd?: number;
  /** The sandbox's directory (process driver): the supervisor exits once it is gone. */
  sandboxDir?: string;
  log?: Logger;
  /** `auto`: confine the sandbox or fail closed; `none`: run unconfined (asked for by name). */
  isolation: 'auto' | 'none';
  /** Enforced limits (the supervisor's cgroup; container drivers enforce them outside and pass none). */
  resources: Resources;
  /** The supervisor bundle's directory in a container (its tools run the confinement). */
  bundleDir: string | null;
  /** The sandbox's name: its hostname. */
  hostname: string;
}

/** Variables that configure the supervisor and never reach sandbox processes. */
const INTERNAL_ENV = [
  'OPENSHELL_SANDBOX_TOKEN',
  'OPENSHELL_SANDBOX_TOKEN_FILE',
  'OPENSHELL_ISOLATION',
  'OPENSHELL_BUNDLE_DIR',
  'OPENSHELL_RESOURCES',
  'OPENSHELL_ENDPOINT',
  'OPENSHELL_SSH_SOCKET',
  'OPENSHELL_SPOOL_DIR',
  'OPENSHELL_PROXY_LISTEN',
  'OPENSHELL_WORKDIR',
  'OPENSHELL_SANDBOX_DIR',
];

export function supervisorOptionsFromEnv(env: NodeJS.ProcessEnv, command: string[]): SupervisorOptions {
  const need = (name: string): string => {
    const value = env[name];
    if (!value) throw new Error(`${name} is required`);
    return value;
  };
  // A driver that cannot use a pipe (a container) hands the token over in a file of a per-sandbox mount.
  const tokenFile = env.OPENSHELL_SANDBOX_TOKEN_FILE;
  if (!env.OPENSHELL_SANDBOX_TOKEN && tokenFile) {
    env = { ...env, OPENSHELL_SANDBOX_TOKEN: readFileSync(tokenFile, 'utf8').trim() };
  }
  const sandboxEnv: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined && !INTERNAL_ENV.includes(k)) sandboxEnv[k] = v;
  return {
    sandboxId: need('OPENSHELL_SANDBOX_ID'),
    token: need('OPENSHELL_SANDBOX_TOKEN'),
    endpoint: need('OPENSHELL_ENDPOINT'),
    command,
    sandboxEnv,
    workdir: env.OPENSHELL_WORKDIR || process.cwd(),
    sshSocket: env.OPENSHELL_SSH_SOCKET || '/run/openshell/ssh.sock',
    spoolDir: env.OPENSHELL_SPOOL_DIR || join(tmpdir(), 'openshell-spool'),
    proxyListen: env.OPENSHELL_PROXY_LISTEN || '127.0.0.1:3128',
    proxyIdleTimeoutMs: positiveInt(env.OPENSHELL_EGRESS_IDLE_TIMEOUT_MS),
    proxyMaxConnections: nonNegativeInt(env.OPENSHELL_EGRESS_MAX_CONNECTIONS),
    // Fail closed: only an explicit `none` runs unconfined.
    isolation: env.OPENSHELL_ISOLATION === 'none' ? 'none' : 'auto',
    resources: parseResources(env.OPENSHELL_RESOURCES),
    bundleDir: env.OPENSHELL_BUNDLE_DIR || null,
    hostname: env.OPENSHELL_SANDBOX_NAME || need('OPENSHELL_SANDBOX_ID'),
    ...(env.OPENSHELL_SANDBOX_DIR ? { sandboxDir: env.OPENSHELL_SANDBOX_DIR } : {}),
  };
}

function parseResources(text: string | undefined): Resources {
  if (!text) return {};
  const value = JSON.parse(text) as Resources;
  if (typeof value !== 'object' || value === null) throw new Error('OPENSHELL_RESOURCES must be a JSON object');
  return value;
}

/** How often a supervisor checks that its sandbox directory is still there. */
const SANDBOX_DIR_CHECK_MS = 2000;

type ExecModule = typeof import('./exec-registry.js');
type EgressModule = typeof import('../egress/index.js');
type EgressProxy = Awaited<ReturnType<EgressModule['startEgressProxy']>>;
type RelayModule = typeof import('./exec-relay.js');

/**
 * Everything inside one sandbox: the control session, the agent's
 * entrypoint, the exec registry, the SSH server and the egress proxy. Owns
 * them all and closes them in `close()`.
 */
export class Supervisor {
  readonly #o: SupervisorOptions;
  readonly #log: Logger;
  readonly #control: ControlClient;
  /** Log lines (JSON text) for the gateway, sent every 200 ms: the newest 2000 (the gateway keeps 2000 per sandbox). */
  readonly #pendingLogs = new LogRing(2000);
  /** Warnings and errors (denied egress among them) for the gateway, apart: a flood of info lines cannot push them out before they are sent. */
  readonly #pendingWarnings = new LogRing(500, 256 * 1024);
  readonly #relays = new Map<string, WebSocket>();
  #logTimer: NodeJS.Timeout | undefined;
  #keepalive = { intervalMs: 10_000, timeoutMs: 30_000 };
  #main: ChildProcess | undefined;
  #mainState: MainProcessMessage | undefined;
  #proxyEnv: Record<string, string> = {};
  #engine: Promise<{ registry: InstanceType<ExecModule['ExecRegistry']>; relay: RelayModule }> | undefined;
  #sshd: Promise<{ close(): Promise<void> }> | undefined;
  #egress: Promise<{ proxy: EgressProxy; mod: EgressModule }> | undefined;
  #broughtUp = false;
  #bringUpTimer: NodeJS.Timeout | undefined;
  #markReady: () => void = () => undefined;
  readonly #ready = new Promise<void>((resolve) => (this.#markReady = resolve));
  #closed = false;
  /** The sandbox's confinement (isolation `auto`): every process starts inside it, or none starts. */
  #confinement: Promise<Confinement> | undefined;
  #isolationState: IsolationMessage | undefined;
  #dirTimer: NodeJS.Timeout | undefined;
  #markGone: (reason: string) => void = () => undefined;
  /**
   * Resolves with the reason when the supervisor has stopped itself because
   * its sandbox is gone: its directory removed, or the gateway does not know
   * it. Nothing could ever adopt it again; `main.ts` exits.
   */
  readonly gone = new Promise<string>((resolve) => (this.#markGone = resolve));
  /** Relays to a TLS or loopback endpoint send zero masking keys (see needsMasking). */
  readonly #zeroMask: boolean;

  constructor(opts: SupervisorOptions) {
    this.#o = opts;
    this.#zeroMask = !needsMasking(opts.endpoint);
    this.#log =
      opts.log ??
      createSupervisorLogger({ bindings: { sandboxId: opts.sandboxId }, sink: (bytes, start, end, level) => this.forwardLog(bytes, start, end, level) });
    this.#control = new ControlClient({
      endpoint: opts.endpoint,
      sandboxId: opts.sandboxId,
      token: opts.token,
      version: SUPERVISOR_VERSION,
      capabilities: ['exec', 'ssh', 'egress'],
      log: this.#log,
      onWelcome: (welcome) => this.#onWelcome(welcome),
      onMessage: (message) => this.#onMessage(message),
      onUnknown: (status) => this.#giveUp(`the gateway does not know this sandbox (${status})`),
    });
  }

  get log(): Logger {
    return this.#log;
  }

  /** The environment of every process started in the sandbox. */
  processEnv(): Record<string, string> {
    return { ...this.#o.sandboxEnv, ...this.#confinedEnv, ...this.#proxyEnv };
  }

  #confinedEnv: Record<string, string> = {};

  /**
   * Dials the gateway first: readiness is on that path. The egress proxy (and
   * the entrypoint, which needs its address) come up once the session is
   * welcomed, or after a short grace period if the gateway is not reachable,
   * so their module loading never delays the hello.
   */
  start(): Promise<void> {
    const dir = this.#o.sandboxDir;
    if (dir) {
      this.#dirTimer = setInterval(() => {
        if (!existsSync(dir)) this.#giveUp(`the sandbox directory ${dir} is gone`);
      }, SANDBOX_DIR_CHECK_MS).unref();
    }
    this.#control.start();
    if (this.#o.isolation === 'auto') {
      this.#confinement = this.#confine();
      this.#confinement.catch(() => undefined);
    } else {
      this.#log.warn({}, 'isolation is off (--isolation none): sandbox processes run unconfined, as the supervisor\'s user');
      this.#setIsolation({ type: 'isolation', ok: false, mode: 'none', message: 'running unconfined (--isolation none)' });
    }
    const grace = setTimeout(() => this.#bringUp(), EGRESS_GRACE_MS);
    grace.unref();
    this.#bringUpTimer = grace;
    return this.#ready;
  }

  async #confine(): Promise<Confinement> {
    const { Confinement } = await import('./isolation/confinement.js');
    try {
      const c = await Confinement.start({
        sandboxId: this.#o.sandboxId,
        hostname: this.#o.hostname,
        workspace: this.#o.workdir,
        runDir: join(dirname(this.#o.sshSocket), 'sandbox-etc'),
        resources: this.#o.resources,
        bundleDir: this.#o.bundleDir,
        path: this.#o.sandboxEnv.PATH ?? process.env.PATH ?? '',
        log: this.#log,
      });
      this.#confinedEnv = { HOME: SANDBOX_HOME, USER: SANDBOX_USER, LOGNAME: SANDBOX_USER };
      if (this.#closed) await c.close();
      this.#setIsolation({ type: 'isolation', ok: true, mode: c.mode, message: c.describe() });
      return c;
    } catch (err) {
      this.#log.error({ err }, 'sandbox confinement failed; nothing will run in this sandbox');
      this.#setIsolation({ type: 'isolation', ok: false, mode: 'failed', message: (err as Error).message });
      throw err;
    }
  }

  #setIsolation(state: IsolationMessage): void {
    this.#isolationState = state;
    this.#control.send(state);
  }

  #bringUp(): void {
    if (this.#broughtUp) return;
    this.#broughtUp = true;
    clearTimeout(this.#bringUpTimer);
    this.#startEgress().then(
      () => this.#startMain(),
      (err: unknown) => {
        this.#log.error({ err }, 'egress proxy failed to start; processes run without a proxy');
        this.#startMain();
      },
    ).finally(() => this.#markReady());
  }

  #startEgress(): Promise<{ proxy: EgressProxy; mod: EgressModule }> {
    this.#egress ??= (async () => {
      const mod = await import('../egress/index.js');
      const confined = this.#confinement ? await this.#confinement : null;
      // Confined, the proxy listens on the sandbox's veth peer: the only address its rules let it reach.
      const [host, port] = confined ? [confined.net.hostAddr, confined.net.proxyPort] : splitHostPort(this.#o.proxyListen);
      const log = this.#log.child({ component: 'egress' });
      const proxy = await mod.startEgressProxy({
        host,
        port,
        policy: null,
        policyVersion: 0,
        // The proxy logs every decision on this logger; info lines are forwarded to the gateway.
        log,
        ...(confined ? { callerNetDir: confined.netDir, callerExeRoot: SANDBOX_ROOT } : {}),
        ...(this.#o.proxyIdleTimeoutMs ? { idleTimeoutMs: this.#o.proxyIdleTimeoutMs } : {}),
        ...(this.#o.proxyMaxConnections !== undefined ? { maxConnections: this.#o.proxyMaxConnections } : {}),
      });
      const url = `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${proxy.port}`;
      this.#proxyEnv = {
        HTTP_PROXY: url,
        HTTPS_PROXY: url,
        ALL_PROXY: url,
        http_proxy: url,
        https_proxy: url,
        all_proxy: url,
        NO_PROXY: '',
        no_proxy: '',
      };
      return { proxy, mod };
    })();
    return this.#egress;
  }

  /** Validates and swaps the network policy atomically; the last good policy stays on failure. */
  async #applyPolicy(policy: unknown, version: number): Promise<void> {
    const { proxy, mod } = await this.#startEgress();
    try {
      const parsed = policy === null || policy === undefined ? null : mod.parsePolicy(policy);
      proxy.setPolicy(parsed, version);
      this.#log.info({ policyVersion: version }, 'network policy applied');
      this.#control.send({ type: 'policyApplied', version, ok: true });
    } catch (err) {
      this.#log.warn({ policyVersion: version, err }, 'network policy rejected; keeping the last good one');
      this.#control.send({ type: 'policyApplied', version, ok: false, error: (err as Error).message });
    }
  }

  #giveUp(reason: string): void {
    if (this.#closed) return;
    this.#log.warn({ reason }, 'the sandbox is gone; the supervisor stops');
    void this.close(reason).finally(() => this.#markGone(reason));
  }

  async close(reason: string): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#log.info({ reason }, 'supervisor stopping');
    clearInterval(this.#dirTimer);
    clearInterval(this.#logTimer);
    clearTimeout(this.#bringUpTimer);
    this.#control.close();
    for (const ws of this.#relays.values()) ws.terminate();
    if (this.#main?.pid) killGroup(this.#main.pid, 'SIGKILL');
    const engine = await this.#engine?.catch(() => undefined);
    engine?.registry.close();
    await (await this.#confinement?.catch(() => undefined))?.close();
    await (await this.#sshd?.catch(() => undefined))?.close();
    await (await this.#egress?.catch(() => undefined))?.proxy.close();
  }

  #onWelcome(welcome: WelcomeMessage): void {
    this.#keepalive = { intervalMs: welcome.keepaliveIntervalMs, timeoutMs: welcome.keepaliveTimeoutMs };
    if (this.#mainState) this.#control.send(this.#mainState);
    if (this.#isolationState) this.#control.send(this.#isolationState);
    this.#flushLogs();
    // Off the Ready path: the proxy (with the policy), the entrypoint, and a warm exec engine.
    // sshd starts on the first SSH relay.
    setImmediate(() => {
      // The policy is in force before the entrypoint makes its first connection.
      void this.#applyPolicy(welcome.policy ?? null, welcome.policyVersion ?? 0)
        .catch(() => undefined)
        .finally(() => this.#bringUp());
      void this.#execEngine().catch((err: unknown) => this.#log.error({ err }, 'exec engine failed to start'));
    });
  }

  #onMessage(message: GatewayToSupervisor): void {
    switch (message.type) {
      case 'relayOpen':
        this.#openRelay(message.channelId, message.target);
        break;
      case 'policy':
        void this.#applyPolicy(message.policy, message.version);
        break;
      case 'relayClose':
        this.#relays.get(message.channelId)?.close(1000, message.reason);
        break;
      default:
        break;
    }
  }

  #openRelay(channelId: string, target: string): void {
    if (target !== 'exec' && target !== 'ssh') {
      this.#control.send({ type: 'relayOpenResult', channelId, ok: false, error: `unknown target ${target}` });
      return;
    }
    this.#control.send({ type: 'relayOpenResult', channelId, ok: true });
    const ws = new WebSocket(wsUrl(this.#o.endpoint, `/v1/supervisor/relay/${encodeURIComponent(channelId)}`), {
      headers: { authorization: `Bearer ${this.#o.token}` },
      perMessageDeflate: false,
      skipUTF8Validation: true,
      handshakeTimeout: this.#keepalive.timeoutMs,
      maxPayload: 64 * 1024 * 1024,
      ...(this.#zeroMask ? { generateMask: zeroMask } : {}),
    });
    const log = this.#log.child({ component: 'relay', channelId, target });
    this.#relays.set(channelId, ws);
    ws.on('upgrade', (res) => res.socket.setNoDelay(true));
    let opened = false;
    // A relay that cannot be dialed is reported at once, so the caller is not left waiting for it to expire.
    const failed = (reason: string) => {
      if (!opened) this.#control.send({ type: 'relayClose', channelId, reason });
    };
    ws.on('unexpected-response', (_req, res) => {
      log.warn({ status: res.statusCode }, 'gateway refused the relay');
      failed(`gateway refused the relay (${res.statusCode})`);
      res.resume();
      ws.terminate();
    });
    ws.on('error', (err) => {
      log.debug({ err }, 'relay error');
      failed(`relay dial failed: ${err.message}`);
    });
    let stop: (() => void) | undefined;
    ws.once('close', () => {
      stop?.();
      this.#relays.delete(channelId);
    });
    ws.once('open', () => {
      opened = true;
      stop = keepAlive(ws, this.#keepalive);
      if (target === 'exec') {
        // Hold frames until the handler is attached: the engine loads lazily, and a frame
        // emitted with no listener would be lost ('open' fires before any data is read).
        ws.pause();
        this.#execEngine().then(
          ({ registry, relay }) => {
            void relay.serveExecRelay(ws, registry, log);
            ws.resume();
          },
          (err: unknown) => {
            log.error({ err }, 'exec engine unavailable');
            closeWebSocket(ws, 4500, 'exec engine unavailable');
          },
        );
      } else {
        void this.#bridgeSsh(ws, log);
      }
    });
  }

  async #bridgeSsh(ws: WebSocket, log: Logger): Promise<void> {
    try {
      ws.pause();
      await this.#sshServer();
      const socket = connect(this.#o.sshSocket);
      const stream = createWebSocketStream(ws);
      ws.resume();
      await pipeline(stream, socket, stream);
    } catch (err) {
      log.debug({ err }, 'ssh relay ended');
      ws.terminate();
    }
  }

  #execEngine(): Promise<{ registry: InstanceType<ExecModule['ExecRegistry']>; relay: RelayModule }> {
    this.#engine ??= (async () => {
      // Nothing runs unconfined by accident: a failed confinement fails the engine.
      const launcher = this.#confinement ? await this.#confinement : null;
      // Execs get the proxy variables: bring the proxy up first (a failure is logged by start()).
      await this.#startEgress().catch(() => undefined);
      const [{ ExecRegistry }, relay] = await Promise.all([import('./exec-registry.js'), import('./exec-relay.js')]);
      const registry = new ExecRegistry({
        log: this.#log.child({ component: 'exec' }),
        spoolDir: this.#o.spoolDir,
        baseEnv: () => this.processEnv(),
        defaultCwd: launcher ? SANDBOX_WORKSPACE : this.#o.workdir,
        launcher,
      });
      return { registry, relay };
    })();
    return this.#engine;
  }

  #sshServer(): Promise<{ close(): Promise<void> }> {
    this.#sshd ??= (async () => {
      const [{ startSshServer }, { registry }] = await Promise.all([import('./sshd.js'), this.#execEngine()]);
      return startSshServer({
        socketPath: this.#o.sshSocket,
        registry,
        log: this.#log.child({ component: 'sshd' }),
        // Confined, SFTP runs as the sandbox's sftp-server inside it, never in the supervisor (root, the host's files).
        sftp: this.#confinement ? 'subprocess' : 'in-process',
      });
    })();
    return this.#sshd;
  }

  #startMain(): void {
    if (!this.#o.command[0]) return;
    if (!this.#confinement) return this.#spawnMain(null);
    this.#confinement.then(
      (c) => this.#spawnMain(c),
      () => this.#log.warn({}, 'the entrypoint does not start: the sandbox is not confined'),
    );
  }

  #spawnMain(confined: Confinement | null): void {
    if (this.#closed) return;
    const argv = confined ? confined.argv(this.#o.command, { cwd: SANDBOX_WORKSPACE, tty: false }) : this.#o.command;
    const [file, ...args] = argv as [string, ...string[]];
    const run = (): ChildProcess =>
      spawn(file, args, {
        cwd: confined ? '/' : this.#o.workdir,
        env: this.processEnv(),
        detached: true,
        stdio: ['ignore', this.#o.stdioFd ?? 'inherit', this.#o.stdioFd ?? 'inherit'],
      });
    const child = confined ? confined.spawnInside(run) : run();
    this.#main = child;
    child.once('spawn', () => {
      this.#log.info({ pid: child.pid, command: this.#o.command }, 'entrypoint started');
      this.#setMain({ type: 'mainProcess', state: 'Running', exitCode: null, signal: null });
    });
    child.once('error', (err) => {
      this.#log.error({ err }, 'entrypoint could not start');
      this.#setMain({ type: 'mainProcess', state: 'Exited', exitCode: 127, signal: null });
    });
    child.once('exit', (code, signal) => {
      this.#log.info({ code, signal }, 'entrypoint exited; the sandbox stays usable');
      this.#setMain({ type: 'mainProcess', state: 'Exited', exitCode: code, signal });
    });
  }

  #setMain(state: MainProcessMessage): void {
    this.#mainState = state;
    this.#control.send(state);
  }

  /** Queues a log line of pino `level`, its UTF-8 JSON in `bytes[start, end)`, for the gateway (lines are batched every 200 ms). */
  forwardLog(bytes: Buffer, start: number, end: number, level: number): void {
    (level >= 40 ? this.#pendingWarnings : this.#pendingLogs).pushBytes(bytes, start, end);
    this.#logTimer ??= setTimeout(() => {
      this.#logTimer = undefined;
      this.#flushLogs();
    }, 200).unref();
  }

  #flushLogs(): void {
    if (this.#pendingLogs.size + this.#pendingWarnings.size === 0 || !this.#control.connected) return;
    // Warnings first; the gateway puts a batch in time order.
    if (this.#control.sendLogLines([this.#pendingWarnings, this.#pendingLogs])) {
      this.#pendingWarnings.clear();
      this.#pendingLogs.clear();
    }
  }
}

function positiveInt(value: string | undefined): number | undefined {
  const n = Number(value);
  return value && Number.isInteger(n) && n > 0 ? n : undefined;
}

function nonNegativeInt(value: string | undefined): number | undefined {
  const n = Number(value);
  return value && Number.isInteger(n) && n >= 0 ? n : undefined;
}

function splitHostPort(listen: string): [string, number] {
  const i = listen.lastIndexOf(':');
  const host = i > 0 ? listen.slice(0, i).replace(/^\[|\]$/g, '') : '127.0.0.1';
  const port = Number(i >= 0 ? listen.slice(i + 1) : listen);
  return [host || '127.0.0.1', Number.isInteger(port) && port >= 0 && port < 65536 ? port : 0];
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // already gone
  }
}

function zeroMask(mask: Buffer): void {
  mask.fill(0);
}

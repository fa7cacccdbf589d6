import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';

/** The gateway's configuration: every flag of DESIGN.md, each with an env var. */
export const ConfigSchema = Type.Object({
  host: Type.String({ default: '127.0.0.1' }),
  port: Type.Integer({ minimum: 0, maximum: 65535, default: 8080 }),
  driver: Type.Union([Type.Literal('process'), Type.Literal('docker'), Type.Literal('kubernetes')], {
    default: 'process',
  }),
  stateDir: Type.String({ minLength: 1 }),
  db: Type.String({ minLength: 1 }),
  /** The URL supervisors dial; empty = the gateway's Unix socket (process driver) or its own URL once it listens. */
  sandboxEndpoint: Type.String({ default: '' }),
  /** Process driver: supervisors dial `<state-dir>/gateway.sock` unless --sandbox-endpoint is set. */
  supervisorSocket: Type.Boolean({ default: true }),
  keepaliveIntervalMs: Type.Integer({ minimum: 50, maximum: 3_600_000, default: 10_000 }),
  keepaliveTimeoutMs: Type.Integer({ minimum: 100, maximum: 3_600_000, default: 30_000 }),
  execResumeWindowMs: Type.Integer({ minimum: 0, maximum: 3_600_000, default: 15_000 }),
  authToken: Type.Optional(Type.String({ minLength: 1 })),
  tlsCert: Type.Optional(Type.String({ minLength: 1 })),
  tlsKey: Type.Optional(Type.String({ minLength: 1 })),
  logLevel: Type.Union(
    [Type.Literal('debug'), Type.Literal('info'), Type.Literal('warn'), Type.Literal('error'), Type.Literal('silent')],
    { default: 'info' },
  ),
  /** Process driver: supervisors kept started and waiting, so a create skips a Node start-up. */
  warmSupervisors: Type.Integer({ minimum: 0, maximum: 64, default: 4 }),
  /** How often TTLs are swept. */
  ttlSweepMs: Type.Integer({ minimum: 50, default: 1000 }),
  bodyLimitBytes: Type.Integer({ minimum: 1024, default: 1_048_576 }),
  /** Exec bodies carry base64 stdin: a larger limit (interactive exec and file uploads stream without one). */
  execBodyLimitBytes: Type.Integer({ minimum: 1024, default: 64 * 1_048_576 }),
  /** `Accept: application/json` exec: bytes kept per output stream (the tail); the rest is counted, flagged and dropped. */
  execBufferLimitBytes: Type.Integer({ minimum: 1024, maximum: 1_073_741_824, default: 16 * 1_048_576 }),
  /** `auto`: the strongest confinement the host supports, failing closed; `none`: unconfined, only when asked for by name. */
  isolation: Type.Union([Type.Literal('auto'), Type.Literal('none')], { default: 'auto' }),
  /** Image for sandboxes created without one (docker and kubernetes drivers). */
  defaultImage: Type.String({ default: '' }),
  /** The Docker/Podman API socket or URL (`unix:///var/run/docker.sock`). */
  dockerHost: Type.String({ default: 'unix:///var/run/docker.sock' }),
  /** The network sandbox containers join. */
  dockerNetwork: Type.String({ default: 'bridge' }),
  /** Namespace of sandbox Pods; empty = the gateway's own (in-cluster) or `default`. */
  k8sNamespace: Type.String({ default: '' }),
  /** Path of a kubeconfig; empty = in-cluster config when in a Pod, else ~/.kube/config. */
  kubeconfig: Type.String({ default: '' }),
  /** The image carrying the supervisor bundle (Kubernetes init container); empty = the gateway's own image. */
  supervisorImage: Type.String({ default: '' }),
  /** A Pod Pending longer than this (unschedulable, pulling) puts its sandbox in Error. */
  k8sStartTimeoutMs: Type.Integer({ minimum: 1000, maximum: 3_600_000, default: 300_000 }),
});
export type Config = Static<typeof ConfigSchema>;

interface Option {
  flag: string;
  env: string;
  key: keyof Config;
  number?: boolean;
  boolean?: boolean;
}

const OPTIONS: Option[] = [
  { flag: 'host', env: 'OPENSHELL_HOST', key: 'host' },
  { flag: 'port', env: 'OPENSHELL_PORT', key: 'port', number: true },
  { flag: 'driver', env: 'OPENSHELL_DRIVER', key: 'driver' },
  { flag: 'db', env: 'OPENSHELL_DB', key: 'db' },
  { flag: 'state-dir', env: 'OPENSHELL_STATE_DIR', key: 'stateDir' },
  { flag: 'sandbox-endpoint', env: 'OPENSHELL_SANDBOX_ENDPOINT', key: 'sandboxEndpoint' },
  { flag: 'supervisor-socket', env: 'OPENSHELL_SUPERVISOR_SOCKET', key: 'supervisorSocket', boolean: true },
  { flag: 'keepalive-interval-ms', env: 'OPENSHELL_KEEPALIVE_INTERVAL_MS', key: 'keepaliveIntervalMs', number: true },
  { flag: 'keepalive-timeout-ms', env: 'OPENSHELL_KEEPALIVE_TIMEOUT_MS', key: 'keepaliveTimeoutMs', number: true },
  { flag: 'exec-resume-window-ms', env: 'OPENSHELL_EXEC_RESUME_WINDOW_MS', key: 'execResumeWindowMs', number: true },
  { flag: 'auth-token', env: 'OPENSHELL_AUTH_TOKEN', key: 'authToken' },
  { flag: 'tls-cert', env: 'OPENSHELL_TLS_CERT', key: 'tlsCert' },
  { flag: 'tls-key', env: 'OPENSHELL_TLS_KEY', key: 'tlsKey' },
  { flag: 'log-level', env: 'OPENSHELL_LOG_LEVEL', key: 'logLevel' },
  { flag: 'warm-supervisors', env: 'OPENSHELL_WARM_SUPERVISORS', key: 'warmSupervisors', number: true },
  { flag: 'exec-buffer-limit-bytes', env: 'OPENSHELL_EXEC_BUFFER_LIMIT_BYTES', key: 'execBufferLimitBytes', number: true },
  { flag: 'isolation', env: 'OPENSHELL_ISOLATION', key: 'isolation' },
  { flag: 'default-image', env: 'OPENSHELL_DEFAULT_IMAGE', key: 'defaultImage' },
  { flag: 'docker-host', env: 'DOCKER_HOST', key: 'dockerHost' },
  { flag: 'docker-network', env: 'OPENSHELL_DOCKER_NETWORK', key: 'dockerNetwork' },
  { flag: 'k8s-namespace', env: 'OPENSHELL_K8S_NAMESPACE', key: 'k8sNamespace' },
  { flag: 'kubeconfig', env: 'KUBECONFIG', key: 'kubeconfig' },
  { flag: 'supervisor-image', env: 'OPENSHELL_SUPERVISOR_IMAGE', key: 'supervisorImage' },
  { flag: 'k8s-start-timeout-ms', env: 'OPENSHELL_K8S_START_TIMEOUT_MS', key: 'k8sStartTimeoutMs', number: true },
];

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Flags and env vars of `openshell gateway start`, for `--help`. */
export const CONFIG_OPTIONS: ReadonlyArray<Readonly<Option>> = OPTIONS;

/**
 * Builds the typed config from flags (win) and env vars. The only reader of
 * `process.env` in the gateway: callers pass it in.
 */
export function loadConfig(argv: string[], env: NodeJS.ProcessEnv, overrides: Partial<Config> = {}): Config {
  const { values } = parseArgs({
    args: argv,
    options: Object.fromEntries(OPTIONS.map((o) => [o.flag, { type: 'string' as const }])),
    strict: true,
    allowPositionals: false,
  });
  const raw: Record<string, unknown> = {};
  for (const o of OPTIONS) {
    const value = (values as Record<string, string | undefined>)[o.flag] ?? env[o.env];
    if (value === undefined || value === '') continue;
    if (o.number) {
      if (!/^\d+$/.test(value)) throw new ConfigError(`--${o.flag} (${o.env}): expected a whole number, got "${value}"`);
      raw[o.key] = Number(value);
    } else if (o.boolean) {
      if (!/^(true|false|1|0)$/.test(value)) throw new ConfigError(`--${o.flag} (${o.env}): expected true or false, got "${value}"`);
      raw[o.key] = value === 'true' || value === '1';
    } else {
      raw[o.key] = value;
    }
  }
  Object.assign(raw, overrides);
  const stateDir = resolve(
    String(raw.stateDir ?? join(env.XDG_STATE_HOME ?? join(homedir(), '.local', 'state'), 'openshell')),
  );
  raw.stateDir = stateDir;
  raw.db ??= `sqlite:${join(stateDir, 'openshell.db')}`;
  const config = Value.Default(ConfigSchema, raw) as Config;
  const errors = [...Value.Errors(ConfigSchema, config)];
  if (errors.length > 0) {
    const e = errors[0];
    const option = OPTIONS.find((o) => `/${o.key}` === e.path);
    const name = option ? `--${option.flag} (${option.env})` : e.path;
    throw new ConfigError(`${name}: ${e.message}`);
  }
  if (Boolean(config.tlsCert) !== Boolean(config.tlsKey)) {
    throw new ConfigError('--tls-cert and --tls-key go together');
  }
  if (config.keepaliveTimeoutMs <= config.keepaliveIntervalMs) {
    throw new ConfigError('--keepalive-timeout-ms must be greater than --keepalive-interval-ms');
  }
  return config;
}

/** A config for tests and embedding: defaults plus overrides, no env. */
export function testConfig(overrides: Partial<Config> & { stateDir: string }): Config {
  return loadConfig([], {}, { db: 'sqlite::memory:', port: 0, logLevel: 'silent', ...overrides });
}

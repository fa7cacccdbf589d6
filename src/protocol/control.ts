/**
 * The supervisor control channel (`GET /v1/supervisor/session`): JSON text
 * frames, one message each. Shapes follow DESIGN.md's Supervisor protocol.
 */
export type RelayTarget = 'ssh' | 'exec';

export interface HelloMessage {
  type: 'hello';
  sandboxId: string;
  version: string;
  capabilities: string[];
}
export interface WelcomeMessage {
  type: 'welcome';
  sessionId: string;
  keepaliveIntervalMs: number;
  keepaliveTimeoutMs: number;
  policy: unknown;
  policyVersion: number;
}
export interface RelayOpenMessage {
  type: 'relayOpen';
  channelId: string;
  target: RelayTarget;
}
export interface RelayOpenResultMessage {
  type: 'relayOpenResult';
  channelId: string;
  ok: boolean;
  error?: string;
}
export interface RelayCloseMessage {
  type: 'relayClose';
  channelId: string;
  reason: string;
}
export interface PolicyMessage {
  type: 'policy';
  policy: unknown;
  version: number;
}
export interface PolicyAppliedMessage {
  type: 'policyApplied';
  version: number;
  ok: boolean;
  error?: string;
}
export interface LogMessage {
  type: 'log';
  /** Supervisors send pino lines; `LogLine`s (what supervisors sent before) are still read. */
  lines: (SupervisorLogLine | LogLine)[];
}
export interface MainProcessMessage {
  type: 'mainProcess';
  state: 'Running' | 'Exited';
  exitCode: number | null;
  signal: string | null;
}

/**
 * How the sandbox is confined (sent after every welcome, once known). `ok`
 * false with a `mode` of `none` means unconfined on request; any other false
 * means confinement failed and the sandbox must not be used (Error).
 */
export interface IsolationMessage {
  type: 'isolation';
  ok: boolean;
  mode: string;
  message: string;
}

/**
 * A supervisor's log line as it sends it: the pino line it writes to stdout
 * (`level` 20/30/40/50, `msg`; the other keys are fields, and a
 * `component` of `egress` marks an egress decision).
 */
export interface SupervisorLogLine {
  level: number;
  time: string;
  msg?: string;
  [field: string]: unknown;
}

/** One supervisor or egress-decision log line, as the gateway keeps and serves it. */
export interface LogLine {
  time: string;
  level: 'debug' | 'info' | 'warn' | 'error';
  source: 'supervisor' | 'egress';
  message: string;
  fields?: Record<string, unknown>;
}

export type SupervisorToGateway =
  | HelloMessage
  | RelayOpenResultMessage
  | RelayCloseMessage
  | PolicyAppliedMessage
  | LogMessage
  | MainProcessMessage
  | IsolationMessage;

export type GatewayToSupervisor = WelcomeMessage | RelayOpenMessage | RelayCloseMessage | PolicyMessage;

/** Parses one text frame; returns null for anything that is not a typed JSON object. */
export function parseMessage<T extends { type: string }>(data: string): T | null {
  try {
    const value: unknown = JSON.parse(data);
    if (typeof value === 'object' && value !== null && typeof (value as { type?: unknown }).type === 'string') {
      return value as T;
    }
  } catch {
    // not JSON: ignored by the caller
  }
  return null;
}

/** WebSocket close codes we use (4000–4999, mirroring the HTTP status of the error code). */
export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  UNAUTHENTICATED: 4401,
  PERMISSION_DENIED: 4403,
  NOT_FOUND: 4404,
  SUPERSEDED: 4409,
  RESOURCE_EXHAUSTED: 4429,
  INTERNAL: 4500,
  SESSION_UNAVAILABLE: 4503,
  KEEPALIVE_TIMEOUT: 4408,
} as const;

/** The openshell SDK: a typed client of the gateway's REST/WebSocket API. */
export { OpenShellClient, ExecChannel, describeCondition, DEFAULT_STREAM_IDLE_TIMEOUT_MS } from './client.js';
export { newRequestId, DEFAULT_RESUME_TIMEOUT_MS, type ExecResumeOptions } from './resume.js';
export type {
  BinaryExecEvent,
  ExecCallOptions,
  ExecWebSocketOptions,
  LogLine,
  PolicyState,
  PolicyUpdate,
  OpenShellClientOptions,
  SignalOption,
  WaitForReadyOptions,
} from './client.js';
export { OpenShellApiError, OpenShellConnectionError, SandboxWaitError } from './errors.js';
export { parseNdjson, splitLines } from './ndjson.js';
export type {
  Condition,
  CreateSandboxBody,
  ErrorEnvelope,
  ExecBody,
  ExecEvent,
  ExecInfo,
  ExecResult,
  MainProcess,
  Phase,
  Sandbox,
  SandboxList,
} from '../schemas/sandbox.js';

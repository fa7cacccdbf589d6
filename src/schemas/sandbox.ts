import { Type, type Static } from '@sinclair/typebox';

/** DNS-1123 label: what sandbox names must be. */
export const SANDBOX_NAME_PATTERN = '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$';
export const ENV_KEY_PATTERN = '^[A-Za-z_][A-Za-z0-9_]*$';
export const REQUEST_ID_PATTERN = '^[A-Za-z0-9._:-]{1,128}$';
export const EXEC_ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$';
export const LABEL_KEY_PATTERN = '^[A-Za-z0-9]([-A-Za-z0-9_./]{0,61}[A-Za-z0-9])?$';

export const PhaseSchema = Type.Union([
  Type.Literal('Provisioning'),
  Type.Literal('Ready'),
  Type.Literal('Error'),
  Type.Literal('Deleting'),
]);
export type Phase = Static<typeof PhaseSchema>;

export const ConditionSchema = Type.Object({
  /** `Ready`: the supervisor session; `Isolated`: the confinement the sandbox runs in (reason = the mode). */
  type: Type.Union([Type.Literal('Ready'), Type.Literal('Isolated')]),
  status: Type.Union([Type.Literal('True'), Type.Literal('False')]),
  reason: Type.String(),
  message: Type.String(),
  lastTransitionTime: Type.String(),
});
export type Condition = Static<typeof ConditionSchema>;

export const MainProcessSchema = Type.Object({
  state: Type.Union([Type.Literal('Pending'), Type.Literal('Running'), Type.Literal('Exited')]),
  exitCode: Type.Union([Type.Integer(), Type.Null()]),
  signal: Type.Union([Type.String(), Type.Null()]),
});
export type MainProcess = Static<typeof MainProcessSchema>;

export const LabelsSchema = Type.Record(Type.String({ pattern: LABEL_KEY_PATTERN }), Type.String({ maxLength: 253 }), {
  maxProperties: 64,
  additionalProperties: false,
});
export const EnvSchema = Type.Record(Type.String({ pattern: ENV_KEY_PATTERN }), Type.String(), {
  maxProperties: 1024,
  additionalProperties: false,
});

/** Enforced limits of a sandbox (every driver). Bounds keep out what no engine would accept. */
export const ResourcesSchema = Type.Object(
  {
    /** CPU cores (fractions allowed): a CFS quota of cpus x the period. */
    cpus: Type.Optional(Type.Number({ exclusiveMinimum: 0, maximum: 1024 })),
    memoryMb: Type.Optional(Type.Integer({ minimum: 16, maximum: 16_777_216 })),
    pids: Type.Optional(Type.Integer({ minimum: 16, maximum: 4_194_304 })),
    diskMb: Type.Optional(Type.Integer({ minimum: 1, maximum: 1_073_741_824 })),
  },
  { additionalProperties: false },
);
export type Resources = Static<typeof ResourcesSchema>;

export const SandboxSchema = Type.Object(
  {
    id: Type.String(),
    name: Type.String(),
    phase: PhaseSchema,
    driver: Type.String(),
    image: Type.Union([Type.String(), Type.Null()]),
    command: Type.Array(Type.String()),
    labels: Type.Record(Type.String(), Type.String()),
    /** The names of the variables set at create; their values never leave the gateway (secrets go in env). */
    env: Type.Array(Type.String()),
    createdAt: Type.String(),
    expiresAt: Type.Union([Type.String(), Type.Null()]),
    policyVersion: Type.Integer(),
    conditions: Type.Array(ConditionSchema),
    mainProcess: MainProcessSchema,
    resources: ResourcesSchema,
  },
  { $id: 'Sandbox' },
);
export type Sandbox = Static<typeof SandboxSchema>;

export const CreateSandboxBodySchema = Type.Object(
  {
    name: Type.Optional(Type.String({ pattern: SANDBOX_NAME_PATTERN, maxLength: 63 })),
    image: Type.Optional(Type.String({ minLength: 1, maxLength: 1024 })),
    command: Type.Optional(Type.Array(Type.String({ maxLength: 65536 }), { minItems: 1, maxItems: 1024 })),
    env: Type.Optional(EnvSchema),
    policy: Type.Optional(Type.Unknown()),
    labels: Type.Optional(LabelsSchema),
    ttlSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 31_536_000 })),
    resources: Type.Optional(ResourcesSchema),
  },
  { additionalProperties: false },
);
export type CreateSandboxBody = Static<typeof CreateSandboxBodySchema>;

export const SandboxListSchema = Type.Object({ sandboxes: Type.Array(SandboxSchema) });
export type SandboxList = Static<typeof SandboxListSchema>;

export const ErrorEnvelopeSchema = Type.Object(
  {
    error: Type.Object({
      code: Type.String(),
      message: Type.String(),
      details: Type.Optional(Type.Unknown()),
    }),
  },
  { $id: 'Error' },
);
export type ErrorEnvelope = Static<typeof ErrorEnvelopeSchema>;

export const ExecBodySchema = Type.Object(
  {
    command: Type.Union([
      Type.String({ minLength: 1, maxLength: 131072 }),
      Type.Array(Type.String({ maxLength: 131072 }), { minItems: 1, maxItems: 1024 }),
    ]),
    env: Type.Optional(EnvSchema),
    workdir: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
    user: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
    timeoutSeconds: Type.Optional(Type.Number({ minimum: 0 })),
    stdin: Type.Optional(Type.String({ contentEncoding: 'base64' })),
    tty: Type.Optional(Type.Boolean()),
    detach: Type.Optional(Type.Boolean()),
    /** Idempotent start (DESIGN.md): the same id in the same sandbox within 24 h never starts a second process. */
    requestId: Type.Optional(Type.String({ pattern: REQUEST_ID_PATTERN, minLength: 1, maxLength: 128 })),
  },
  { additionalProperties: false },
);
export type ExecBody = Static<typeof ExecBodySchema>;

/** NDJSON events of `POST /v1/sandboxes/:name/exec`. */
export type ExecEvent =
  | { type: 'started'; execId: string }
  | { type: 'stdout' | 'stderr'; data: string; offset: number }
  | { type: 'keepalive' }
  | { type: 'exit'; exitCode: number | null; signal: string | null; durationMs: number; timedOut?: boolean }
  | {
      type: 'error';
      code:
        | 'RELAY_LOST'
        | 'SESSION_UNAVAILABLE'
        | 'SANDBOX_NOT_READY'
        | 'INTERNAL'
        | 'EXEC_NOT_FOUND'
        | 'OUTPUT_EXPIRED'
        | 'CONFLICT'
        | 'INVALID_ARGUMENT';
      message: string;
      /** The gateway ended the stream while the process keeps running (a shutdown): re-attach elsewhere. */
      resumable?: true;
    }
  /** Output replay without `follow`: the exec is still running; everything before these offsets was sent. */
  | { type: 'running'; stdoutOffset: number; stderrOffset: number };

/** One exec of a sandbox (`GET …/execs`, `GET …/execs/:execId`). */
export const ExecInfoSchema = Type.Object(
  {
    execId: Type.String(),
    requestId: Type.Union([Type.String(), Type.Null()]),
    state: Type.Union([Type.Literal('running'), Type.Literal('exited')]),
    command: Type.Array(Type.String()),
    tty: Type.Boolean(),
    pid: Type.Integer(),
    exitCode: Type.Union([Type.Integer(), Type.Null()]),
    signal: Type.Union([Type.String(), Type.Null()]),
    timedOut: Type.Boolean(),
    startedAt: Type.String(),
    finishedAt: Type.Union([Type.String(), Type.Null()]),
    durationMs: Type.Union([Type.Integer(), Type.Null()]),
    stdoutBytes: Type.Integer(),
    stderrBytes: Type.Integer(),
  },
  { $id: 'ExecInfo' },
);
export type ExecInfo = Static<typeof ExecInfoSchema>;
export const ExecListSchema = Type.Object({ execs: Type.Array(ExecInfoSchema) });
export type ExecList = Static<typeof ExecListSchema>;

export interface ExecResult {
  exitCode: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  durationMs: number;
  timedOut?: boolean;
  /** Present when the stream passed the gateway's buffer limit: only its tail is in `stdout`. */
  stdoutTruncated?: true;
  /** The stream's whole size in bytes, when truncated. */
  stdoutBytes?: number;
  stderrTruncated?: true;
  stderrBytes?: number;
}

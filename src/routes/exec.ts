import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import { OpenShellError, invalidArgument } from '../errors.js';
import { collectExec, execReadable } from '../relay/exec-stream.js';
import { serveInteractiveExec } from '../relay/interactive.js';
import {
  ErrorEnvelopeSchema,
  EXEC_ID_PATTERN,
  ExecBodySchema,
  ExecInfoSchema,
  ExecListSchema,
  REQUEST_ID_PATTERN,
  SANDBOX_NAME_PATTERN,
} from '../schemas/sandbox.js';

const NameParams = Type.Object({ name: Type.String({ pattern: SANDBOX_NAME_PATTERN, maxLength: 63 }) });
const ExecParams = Type.Object({
  name: Type.String({ pattern: SANDBOX_NAME_PATTERN, maxLength: 63 }),
  execId: Type.String({ pattern: EXEC_ID_PATTERN, maxLength: 128 }),
});
const OFFSET = Type.String({ pattern: '^(0|[1-9][0-9]{0,15})$', description: 'a byte offset in the stream' });
const Bool = Type.Union([Type.Literal('true'), Type.Literal('false'), Type.Literal('1'), Type.Literal('0')]);
const OutputQuery = Type.Object({
  stdoutOffset: Type.Optional(OFFSET),
  stderrOffset: Type.Optional(OFFSET),
  follow: Type.Optional(Bool),
});
const SignalBody = Type.Object(
  { signal: Type.String({ pattern: '^(SIG)?[A-Z0-9+-]{1,16}$|^[0-9]{1,2}$', description: 'e.g. SIGTERM, TERM, 9' }) },
  { additionalProperties: false },
);
const StreamSchema = Type.Any({ description: 'NDJSON exec events (application/x-ndjson), or with Accept: application/json one result object' });
const DetachedSchema = Type.Object({ execId: Type.String() });
const SignalResultSchema = Type.Object({ execId: Type.String(), signal: Type.String(), delivered: Type.Boolean() });
const errors = { 400: ErrorEnvelopeSchema, 404: ErrorEnvelopeSchema, 503: ErrorEnvelopeSchema };
const truthy = (v: string | undefined): boolean => v === 'true' || v === '1';
const InteractiveQuery = Type.Object({
  command: Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.String(), { minItems: 1, maxItems: 1024 })]),
  tty: Type.Optional(Bool),
  requestId: Type.Optional(Type.String({ pattern: REQUEST_ID_PATTERN, minLength: 1, maxLength: 128 })),
  stdoutOffset: Type.Optional(OFFSET),
  stderrOffset: Type.Optional(OFFSET),
  workdir: Type.Optional(Type.String({ minLength: 1 })),
  user: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
  env: Type.Optional(Type.Union([Type.String(), Type.Array(Type.String(), { maxItems: 1024 })])),
  timeoutSeconds: Type.Optional(Type.String({ pattern: '^[0-9]{1,9}$' })),
  cols: Type.Optional(Type.String({ pattern: '^[0-9]{1,4}$' })),
  rows: Type.Optional(Type.String({ pattern: '^[0-9]{1,4}$' })),
});

export const execRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { execs, config } = app.openshell;

  app.post(
    '/v1/sandboxes/:name/exec',
    {
      bodyLimit: config.execBodyLimitBytes,
      schema: {
        tags: ['exec'],
        params: NameParams,
        body: ExecBodySchema,
        response: { 200: StreamSchema, 202: DetachedSchema, ...errors },
      },
    },
    async (request, reply) => {
      if (request.body.detach) {
        const { execId } = await execs.startDetached(request.params.name, request.body);
        return reply.code(202).send({ execId });
      }
      const abort = new AbortController();
      // The response's close (not the request's) means the caller went away.
      reply.raw.once('close', () => abort.abort());
      const run = await execs.start(request.params.name, request.body, { signal: abort.signal });
      const started = Date.now();
      abort.signal.addEventListener('abort', () => {
        if (!run.finished) run.abort();
      });
      const finish = (outcome: string) => execs.finished(Date.now() - started, outcome);

      if (wantsJson(request.headers.accept)) {
        const result = await collectExec(run, config.execBufferLimitBytes);
        if ('type' in result) {
          finish(result.code);
          throw new OpenShellError(result.code, result.message);
        }
        finish('exit');
        return result;
      }
      let outcome = 'aborted';
      const body = execReadable(run, undefined, (end) => (outcome = end));
      body.once('close', () => finish(outcome));
      abort.signal.addEventListener('abort', () => body.destroy());
      return reply.type('application/x-ndjson').header('cache-control', 'no-store').send(body);
    },
  );

  app.get(
    '/v1/sandboxes/:name/execs',
    { schema: { tags: ['exec'], params: NameParams, response: { 200: ExecListSchema, ...errors } } },
    async (request) => ({ execs: await execs.list(request.params.name) }),
  );

  app.get(
    '/v1/sandboxes/:name/execs/:execId',
    { schema: { tags: ['exec'], params: ExecParams, response: { 200: ExecInfoSchema, ...errors } } },
    async (request) => execs.info(request.params.name, request.params.execId),
  );

  app.get(
    '/v1/sandboxes/:name/execs/:execId/output',
    { schema: { tags: ['exec'], params: ExecParams, querystring: OutputQuery, response: { 200: StreamSchema, 400: ErrorEnvelopeSchema, 404: ErrorEnvelopeSchema, 410: ErrorEnvelopeSchema } } },
    async (request, reply) => {
      const abort = new AbortController();
      reply.raw.once('close', () => abort.abort());
      const q = request.query;
      const offsets = { stdout: Number(q.stdoutOffset ?? 0), stderr: Number(q.stderrOffset ?? 0) };
      const run = await execs.attach(request.params.name, request.params.execId, offsets, { follow: truthy(q.follow), signal: abort.signal });
      // A reader leaving never touches the process (unlike the caller of a non-detached exec).
      abort.signal.addEventListener('abort', () => run.close());
      const body = execReadable(run);
      abort.signal.addEventListener('abort', () => body.destroy());
      return reply.type('application/x-ndjson').header('cache-control', 'no-store').send(body);
    },
  );

  app.post(
    '/v1/sandboxes/:name/execs/:execId/signal',
    { schema: { tags: ['exec'], params: ExecParams, body: SignalBody, response: { 200: SignalResultSchema, 409: ErrorEnvelopeSchema, ...errors } } },
    async (request) => execs.signal(request.params.name, request.params.execId, request.body.signal),
  );

  app.get(
    '/v1/sandboxes/:name/exec',
    { websocket: true, schema: { params: NameParams, querystring: InteractiveQuery } },
    (socket, request) => {
      const q = request.query;
      void serveInteractiveExec(socket, execs, {
        name: request.params.name,
        command: Array.isArray(q.command) ? q.command : [q.command],
        tty: truthy(q.tty),
        requestId: q.requestId,
        offsets: q.stdoutOffset || q.stderrOffset ? { stdout: Number(q.stdoutOffset ?? 0), stderr: Number(q.stderrOffset ?? 0) } : undefined,
        workdir: q.workdir,
        user: q.user,
        env: parseEnvPairs(q.env),
        timeoutSeconds: q.timeoutSeconds ? Number(q.timeoutSeconds) : undefined,
        cols: q.cols ? Number(q.cols) : undefined,
        rows: q.rows ? Number(q.rows) : undefined,
        keepalive: { intervalMs: config.keepaliveIntervalMs, timeoutMs: config.keepaliveTimeoutMs },
        log: request.log,
      });
    },
  );
};

/** `?env=K=V` (repeatable) → `{K: V}`; malformed pairs are a 400 naming the field. */
function parseEnvPairs(raw: string | string[] | undefined): Record<string, string> | undefined {
  if (raw === undefined) return undefined;
  const env: Record<string, string> = {};
  for (const pair of Array.isArray(raw) ? raw : [raw]) {
    const eq = pair.indexOf('=');
    const key = eq > 0 ? pair.slice(0, eq) : '';
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) throw invalidArgument('querystring.env', `expected KEY=value, got "${pair.slice(0, 64)}"`);
    env[key] = pair.slice(eq + 1);
  }
  return env;
}

function wantsJson(accept: string | undefined): boolean {
  if (!accept) return false;
  return accept.includes('application/json') && !accept.includes('application/x-ndjson');
}

import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import { OpenShellError, invalidArgument } from '../errors.js';
import { collectExec, execReadable } from '../relay/exec-stream.js';
import { serveInteractiveExec } from '../relay/interactive.js';
import { ExecBodySchema, SANDBOX_NAME_PATTERN } from '../schemas/sandbox.js';

const NameParams = Type.Object({ name: Type.String({ pattern: SANDBOX_NAME_PATTERN, maxLength: 63 }) });
const InteractiveQuery = Type.Object({
  command: Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.String(), { minItems: 1, maxItems: 1024 })]),
  tty: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false'), Type.Literal('1'), Type.Literal('0')])),
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
      },
    },
    async (request, reply) => {
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
    '/v1/sandboxes/:name/exec',
    { websocket: true, schema: { params: NameParams, querystring: InteractiveQuery } },
    (socket, request) => {
      const q = request.query;
      void serveInteractiveExec(socket, execs, {
        name: request.params.name,
        command: Array.isArray(q.command) ? q.command : [q.command],
        tty: q.tty === 'true' || q.tty === '1',
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

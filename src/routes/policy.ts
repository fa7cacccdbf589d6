import { Readable } from 'node:stream';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { LogLine } from '../protocol/control.js';
import { SANDBOX_NAME_PATTERN } from '../schemas/sandbox.js';

const NameParams = Type.Object({ name: Type.String({ pattern: SANDBOX_NAME_PATTERN, maxLength: 63 }) });
/** The policy document itself, or `{"policy": …}`; `null` clears it (deny all). */
const PolicyBody = Type.Union([Type.Object({}, { additionalProperties: true }), Type.Null()]);
const LogsQuery = Type.Object({
  follow: Type.Optional(Type.Union([Type.Literal('true'), Type.Literal('false'), Type.Literal('1'), Type.Literal('0')])),
  tail: Type.Optional(Type.String({ pattern: '^[0-9]{1,6}$' })),
});

/** Network policy (read, replace live) and the sandbox's supervisor/egress logs. */
export const policyRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { policies, sandboxes, logs } = app.openshell;

  app.get('/v1/sandboxes/:name/policy', { schema: { tags: ['policy'], params: NameParams } }, async (request) =>
    policies.get(request.params.name),
  );

  app.put(
    '/v1/sandboxes/:name/policy',
    { schema: { tags: ['policy'], params: NameParams, body: PolicyBody } },
    async (request) => {
      const body = request.body as Record<string, unknown> | null;
      const wrapped = body !== null && Object.keys(body).length === 1 && 'policy' in body;
      return policies.set(request.params.name, wrapped ? body.policy : body);
    },
  );

  app.get(
    '/v1/sandboxes/:name/logs',
    { schema: { tags: ['logs'], params: NameParams, querystring: LogsQuery } },
    async (request, reply) => {
      const record = await sandboxes.getRecord(request.params.name);
      const tail = request.query.tail ? Number(request.query.tail) : undefined;
      const past = logs.get(record.id);
      const initial = tail === undefined ? past : past.slice(Math.max(0, past.length - tail));
      const follow = request.query.follow === 'true' || request.query.follow === '1';
      const toLine = (l: LogLine) => `${JSON.stringify(l)}\n`;
      reply.type('application/x-ndjson').header('cache-control', 'no-store');
      if (!follow) return reply.send(initial.map(toLine).join(''));
      const stream = new Readable({ read() {} });
      for (const line of initial) stream.push(toLine(line));
      const stop = logs.follow(record.id, (line) => stream.push(toLine(line)));
      const offDeleted = sandboxes.on('deleted', (r) => {
        if (r.id === record.id) stream.push(null);
      });
      reply.raw.once('close', () => {
        stop();
        offDeleted();
        stream.destroy();
      });
      return reply.send(stream);
    },
  );
};

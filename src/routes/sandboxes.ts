import { Readable } from 'node:stream';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import { invalidArgument } from '../errors.js';
import {
  CreateSandboxBodySchema,
  ErrorEnvelopeSchema,
  SANDBOX_NAME_PATTERN,
  SandboxListSchema,
  SandboxSchema,
} from '../schemas/sandbox.js';

const NameParams = Type.Object({ name: Type.String({ pattern: SANDBOX_NAME_PATTERN, maxLength: 63 }) });
const ListQuery = Type.Object({
  label: Type.Optional(Type.Union([Type.String(), Type.Array(Type.String())])),
});
const errors = { 400: ErrorEnvelopeSchema, 404: ErrorEnvelopeSchema, 409: ErrorEnvelopeSchema };

export const sandboxRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { sandboxes } = app.openshell;

  app.post(
    '/v1/sandboxes',
    { schema: { tags: ['sandboxes'], body: CreateSandboxBodySchema, response: { 201: SandboxSchema, ...errors } } },
    async (request, reply) => reply.code(201).send(await sandboxes.create(request.body)),
  );

  app.get(
    '/v1/sandboxes',
    { schema: { tags: ['sandboxes'], querystring: ListQuery, response: { 200: SandboxListSchema, 400: ErrorEnvelopeSchema } } },
    async (request) => ({ sandboxes: await sandboxes.list(parseLabelFilter(request.query.label)) }),
  );

  app.get(
    '/v1/sandboxes/:name',
    { schema: { tags: ['sandboxes'], params: NameParams, response: { 200: SandboxSchema, ...errors } } },
    async (request) => sandboxes.get(request.params.name),
  );

  app.delete(
    '/v1/sandboxes/:name',
    { schema: { tags: ['sandboxes'], params: NameParams, response: { 200: SandboxSchema, ...errors } } },
    async (request) => sandboxes.delete(request.params.name),
  );

  app.get(
    '/v1/sandboxes/:name/watch',
    { schema: { tags: ['sandboxes'], params: NameParams } },
    async (request, reply) => {
      await sandboxes.getRecord(request.params.name); // 404 before the stream starts
      const abort = new AbortController();
      request.raw.once('close', () => abort.abort());
      const lines = (async function* () {
        for await (const sandbox of sandboxes.watch(request.params.name, abort.signal)) {
          yield `${JSON.stringify(sandbox)}\n`;
        }
      })();
      return reply.type('application/x-ndjson').header('cache-control', 'no-store').send(Readable.from(lines));
    },
  );
};

/** `?label=k=v` (repeatable) → `{k: v}`. */
function parseLabelFilter(raw: string | string[] | undefined): Record<string, string> | undefined {
  if (raw === undefined) return undefined;
  const filter: Record<string, string> = {};
  for (const item of Array.isArray(raw) ? raw : [raw]) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw invalidArgument('label', `expected key=value, got "${item}"`);
    filter[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return filter;
}

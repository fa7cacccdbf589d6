import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import { FileService } from '../relay/files.js';
import { SANDBOX_NAME_PATTERN } from '../schemas/sandbox.js';

const NameParams = Type.Object({ name: Type.String({ pattern: SANDBOX_NAME_PATTERN, maxLength: 63 }) });
const FileQuery = Type.Object({
  path: Type.String({ minLength: 1, maxLength: 4096 }),
  format: Type.Optional(Type.Union([Type.Literal('tar'), Type.Literal('raw')])),
});

/** `PUT`/`GET /v1/sandboxes/:name/files?path=`: raw bodies, streamed both ways, no size cap. */
export const fileRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const files = new FileService(app.openshell.execs);
  // Bodies here are streams, not JSON: hand the raw request through (this plugin only).
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_request, _payload, done) => done(null));

  app.put(
    '/v1/sandboxes/:name/files',
    { schema: { tags: ['files'], params: NameParams, querystring: FileQuery } },
    async (request, reply) => {
      const abort = new AbortController();
      request.raw.once('aborted', () => abort.abort());
      const tar = request.query.format === 'tar' || request.headers['content-type'] === 'application/x-tar';
      const result = await files.upload(request.params.name, request.query.path, request.raw, { tar, signal: abort.signal });
      return reply.code(201).send(result);
    },
  );

  app.get(
    '/v1/sandboxes/:name/files',
    { schema: { tags: ['files'], params: NameParams, querystring: FileQuery } },
    async (request, reply) => {
      const abort = new AbortController();
      reply.raw.once('close', () => abort.abort());
      const tar = request.query.format === 'tar';
      const stream = await files.download(request.params.name, request.query.path, { tar, signal: abort.signal });
      return reply.type(tar ? 'application/x-tar' : 'application/octet-stream').send(stream);
    },
  );
};

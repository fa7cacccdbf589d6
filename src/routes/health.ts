import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';

export const healthRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get(
    '/healthz',
    { schema: { response: { 200: Type.Object({ status: Type.Literal('ok') }) } } },
    async () => ({ status: 'ok' as const }),
  );

  app.get('/metrics', { schema: { hide: true } }, async (_request, reply) => {
    const { registry } = app.openshell.metrics;
    return reply.type(registry.contentType).send(await registry.metrics());
  });
};

import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from '@sinclair/typebox';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { OpenShellError } from '../errors.js';
import { bridgeSsh } from '../relay/ssh-bridge.js';
import { bearerToken, hashToken } from '../sandboxes/tokens.js';
import { SANDBOX_NAME_PATTERN } from '../schemas/sandbox.js';
import type { SandboxRecord } from '../store/index.js';

const ChannelParams = Type.Object({ channelId: Type.String({ pattern: '^ch_[0-9a-f]{1,64}$' }) });
const NameParams = Type.Object({ name: Type.String({ pattern: SANDBOX_NAME_PATTERN, maxLength: 63 }) });

/** Relay WebSockets: dialed by supervisors (claim) and by SSH clients. */
export const relayRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { sandboxes, broker, config } = app.openshell;

  /** Only the sandbox that owns a pending relay may claim it; checked before the upgrade. */
  async function authorizeClaim(request: FastifyRequest<{ Params: { channelId: string } }>, _reply: FastifyReply) {
    const token = bearerToken(request.headers.authorization);
    const sandboxId = token ? await sandboxes.sandboxIdByTokenHash(hashToken(token)) : null;
    if (!sandboxId) throw new OpenShellError('UNAUTHENTICATED', 'a valid sandbox token is required');
    const verdict = broker.canClaim(request.params.channelId, sandboxId);
    if (verdict === 'forbidden') throw new OpenShellError('PERMISSION_DENIED', 'relay belongs to another sandbox');
    if (verdict === 'not_found') throw new OpenShellError('NOT_FOUND', 'no such pending relay (expired?)');
    claimant.set(request, sandboxId);
  }
  /** The sandbox id each claim request was authorized for. */
  const claimant = new WeakMap<object, string>();

  app.get(
    '/v1/supervisor/relay/:channelId',
    { websocket: true, schema: { params: ChannelParams }, preValidation: authorizeClaim },
    (socket, request) => {
      const sandboxId = claimant.get(request) ?? '';
      if (!broker.claim(request.params.channelId, sandboxId, socket)) socket.close(4404, 'relay expired');
    },
  );

  app.get(
    '/v1/sandboxes/:name/ssh',
    {
      websocket: true,
      schema: { params: NameParams },
      preValidation: async (request: FastifyRequest<{ Params: { name: string } }>) => {
        request.sandbox = await sandboxes.getRecord(request.params.name);
      },
    },
    (socket, request) => {
      void bridgeSsh(socket, broker, (request.sandbox as SandboxRecord).id, config, request.log);
    },
  );
};

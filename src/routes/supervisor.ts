import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { OpenShellError } from '../errors.js';
import { acceptSupervisorSession } from '../relay/accept.js';
import { bearerToken, hashToken } from '../sandboxes/tokens.js';
import type { SandboxRecord } from '../store/index.js';

declare module 'fastify' {
  interface FastifyRequest {
    sandbox?: SandboxRecord;
  }
}

/** The routes supervisors dial, authenticated by their per-sandbox token. */
export const supervisorRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { sandboxes, sessions, config } = app.openshell;

  /** Resolves the sandbox token to its sandbox before any upgrade: 401 otherwise. */
  async function authenticate(request: FastifyRequest, _reply: FastifyReply): Promise<void> {
    const token = bearerToken(request.headers.authorization);
    const record = token ? await sandboxes.getByTokenHash(hashToken(token)) : null;
    if (!record) throw new OpenShellError('UNAUTHENTICATED', 'a valid sandbox token is required');
    if (record.phase === 'Deleting') throw new OpenShellError('PERMISSION_DENIED', 'sandbox is being deleted');
    request.sandbox = record;
  }

  app.get('/v1/supervisor/session', { websocket: true, preValidation: authenticate }, (socket, request) => {
    const record = request.sandbox as SandboxRecord;
    acceptSupervisorSession(socket, {
      sandboxId: record.id,
      policy: record.policy,
      policyVersion: record.policyVersion,
      sessions,
      log: request.log,
      keepaliveIntervalMs: config.keepaliveIntervalMs,
      keepaliveTimeoutMs: config.keepaliveTimeoutMs,
      onMessage: (session, message) => app.openshell.onSupervisorMessage(session, message),
    });
  });
};

import { timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fastifySwagger from '@fastify/swagger';
import fastifyWebsocket from '@fastify/websocket';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Config } from './config.js';
import { OpenShellError } from './errors.js';
import { dirname, join } from 'node:path';
import { mkdir } from 'node:fs/promises';
import { createServerFactory } from './http/server-factory.js';
import { listenUnix, MAX_UNIX_PATH, type UnixListener } from './http/unix-listener.js';
import { createDriver } from './drivers/index.js';
import { Gateway, type GatewayDeps } from './gateway.js';
import { REDACT_PATHS } from './log.js';
import { errorHandler, notFoundHandler } from './routes/error-handler.js';
import { execRoutes } from './routes/exec.js';
import { fileRoutes } from './routes/files.js';
import { healthRoutes } from './routes/health.js';
import { applyHttpEdges } from './routes/http-edges.js';
import { policyRoutes } from './routes/policy.js';
import { relayRoutes } from './routes/relay.js';
import { sandboxRoutes } from './routes/sandboxes.js';
import { supervisorRoutes } from './routes/supervisor.js';
import { bearerToken } from './sandboxes/tokens.js';

declare module 'fastify' {
  interface FastifyInstance {
    openshell: Gateway;
  }
}

export type App = FastifyInstance;

/** Builds the gateway app (what `server.ts` listens with and what tests build). */
export async function buildApp(config: Config, deps: GatewayDeps = {}): Promise<FastifyInstance> {
  // One port: HTTP/1.1 (WebSocket upgrades) and HTTP/2 (h2c by preface sniffing, or h2 via ALPN with TLS).
  const tls = config.tlsCert && config.tlsKey ? { cert: readFileSync(config.tlsCert), key: readFileSync(config.tlsKey) } : undefined;
  const app = Fastify({
    serverFactory: createServerFactory({ tls }) as never,
    logger: config.logLevel === 'silent' ? false : { level: config.logLevel, redact: REDACT_PATHS },
    forceCloseConnections: true,
    bodyLimit: config.bodyLimitBytes,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
  }).withTypeProvider<TypeBoxTypeProvider>();

  const driver = deps.driver ?? (await createDriver(config, app.log));
  const gateway = new Gateway(config, app.log, { ...deps, driver });
  app.decorate('openshell', gateway);
  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler(notFoundHandler);

  await app.register(fastifySwagger, {
    openapi: {
      info: { title: 'openshell gateway', version: '0.1.0' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
    },
  });
  app.get('/docs/json', { schema: { hide: true } }, async () => app.swagger());
  await app.register(fastifyWebsocket, {
    options: { perMessageDeflate: false, maxPayload: 64 * 1024 * 1024, skipUTF8Validation: true },
  });
  applyHttpEdges(app);

  if (config.authToken) {
    const expected = Buffer.from(config.authToken);
    app.addHook('onRequest', async (request) => {
      const path = request.url;
      if (!path.startsWith('/v1/') || path.startsWith('/v1/supervisor/')) return;
      const token = bearerToken(request.headers.authorization);
      const given = Buffer.from(token ?? '');
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
        throw new OpenShellError('UNAUTHENTICATED', 'missing or invalid bearer token');
      }
    });
  }

  await app.register(healthRoutes);
  await app.register(sandboxRoutes);
  await app.register(supervisorRoutes);
  await app.register(relayRoutes);
  await app.register(execRoutes);
  await app.register(fileRoutes);
  await app.register(policyRoutes);

  // Supervisors dial the gateway's own URL unless --sandbox-endpoint says otherwise; a wildcard
  // listen address is not dialable, so they use loopback then.
  app.addHook('onListen', async () => {
    gateway.setListenUrl(listenUrl(app, config).replace(/\/\/(0\.0\.0\.0|\[::\]):/, '//127.0.0.1:'));
  });
  // Supervisors on this host (process driver) dial a Unix socket in the state
  // dir instead: cheaper per byte than loopback TCP. --sandbox-endpoint wins.
  let unix: UnixListener | null = null;
  // Containers (docker driver) get the socket's directory bind-mounted: a directory holding only the socket.
  const socketPath = config.driver === 'docker' ? join(config.stateDir, 'run', 'gateway.sock') : join(config.stateDir, 'gateway.sock');
  if ((config.driver === 'process' || config.driver === 'docker') && !config.sandboxEndpoint && config.supervisorSocket) {
    // onReady, not onListen: listen() waits for it, so the first sandbox already gets the socket.
    app.addHook('onReady', async () => {
      if (socketPath.length > MAX_UNIX_PATH) {
        app.log.info({ path: socketPath }, 'state dir path too long for a unix socket; supervisors dial TCP');
        return;
      }
      try {
        await mkdir(dirname(socketPath), { recursive: true, mode: 0o700 });
        unix = await listenUnix(app, socketPath);
        gateway.setSupervisorSocket(socketPath);
        app.log.info({ path: socketPath }, 'supervisors dial the gateway on this unix socket');
      } catch (err) {
        app.log.warn({ err, path: socketPath }, 'cannot listen on the supervisor socket; supervisors dial TCP');
      }
    });
  }
  // WebSockets first (preClose), so supervisors see a clean close; then the domain (onClose).
  app.addHook('preClose', async () => {
    // Exec streams first get their terminal line, then the sessions close.
    await gateway.execs.shutdown();
    gateway.closeSessions();
  });
  app.addHook('onClose', async () => {
    await unix?.close();
    await gateway.close();
  });

  await gateway.start();
  return app;
}

/** The URL the app listens on, for printing and for clients. */
export function listenUrl(app: FastifyInstance, config: Config): string {
  const address = app.server.address();
  if (!address || typeof address === 'string') return String(address);
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return `${config.tlsCert ? 'https' : 'http'}://${host}:${address.port}`;
}

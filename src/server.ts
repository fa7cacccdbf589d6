import { setFlagsFromString } from 'node:v8';
import type { FastifyInstance } from 'fastify';
import { buildApp, listenUrl } from './app.js';
import { ConfigError, loadConfig } from './config.js';
import { NO_INCREMENTAL_MARKING } from './paths.js';

/**
 * `openshell gateway start`: loadConfig → buildApp → listen; SIGTERM/SIGINT
 * close everything. Returns the app (for embedding); exits on config errors.
 */
export async function startGateway(argv: string[], env: NodeJS.ProcessEnv): Promise<FastifyInstance> {
  let config;
  try {
    config = loadConfig(argv, env);
  } catch (err) {
    if (err instanceof ConfigError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`openshell gateway: ${(err as Error).message}\n`);
      process.exit(2);
    }
    throw err;
  }
  // Set before the gateway allocates anything; OPENSHELL_GATEWAY_INCREMENTAL_MARKING=1 keeps V8's default.
  if (env.OPENSHELL_GATEWAY_INCREMENTAL_MARKING !== '1') setFlagsFromString(NO_INCREMENTAL_MARKING);
  const app = await buildApp(config);
  await app.listen({ host: config.host, port: config.port });
  process.stdout.write(`openshell gateway listening on ${listenUrl(app, config)}\n`);

  let closing = false;
  const shutdown = (signal: NodeJS.Signals) => {
    if (closing) return;
    closing = true;
    app.log.info({ signal }, 'shutting down');
    const force = setTimeout(() => process.exit(1), 10_000).unref();
    app.close().then(
      () => {
        clearTimeout(force);
        process.exit(0);
      },
      (err: unknown) => {
        app.log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', shutdown);
  process.once('SIGINT', shutdown);
  return app;
}

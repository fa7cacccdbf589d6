import { pipeline } from 'node:stream/promises';
import { createWebSocketStream, type WebSocket } from 'ws';
import type { Config } from '../config.js';
import { isOpenShellError } from '../errors.js';
import type { Logger } from '../log.js';
import type { RelayBroker } from './broker.js';
import { closeWebSocket, keepAlive } from './heartbeat.js';

/**
 * Bridges a caller's WebSocket (raw SSH bytes, e.g. from `openshell
 * ssh-proxy`) to an `ssh` relay to the sandbox's sshd. Either side ending
 * ends both; both sides have liveness checks.
 */
export async function bridgeSsh(
  client: WebSocket,
  broker: RelayBroker,
  sandboxId: string,
  config: Pick<Config, 'keepaliveIntervalMs' | 'keepaliveTimeoutMs'>,
  log: Logger,
): Promise<void> {
  const abort = new AbortController();
  client.once('close', () => abort.abort());
  const stopClient = keepAlive(client, { intervalMs: config.keepaliveIntervalMs, timeoutMs: config.keepaliveTimeoutMs });
  // Hold what the client sends (its SSH banner) until the relay is up.
  client.pause();
  let relay: WebSocket;
  try {
    relay = await broker.open(sandboxId, 'ssh', abort.signal);
  } catch (err) {
    stopClient();
    const code = isOpenShellError(err) ? err.code : 'INTERNAL';
    closeWebSocket(client, isOpenShellError(err) ? 4000 + (err.statusCode % 1000) : 4500, code);
    return;
  }
  client.resume();
  const a = createWebSocketStream(client);
  const b = createWebSocketStream(relay);
  const end = () => {
    a.destroy();
    b.destroy();
  };
  client.once('close', end);
  relay.once('close', end);
  try {
    await Promise.all([pipeline(a, b), pipeline(b, a)]);
  } catch (err) {
    log.debug({ err, sandboxId }, 'ssh bridge ended');
  } finally {
    stopClient();
    if (client.readyState === client.OPEN) client.close(1000);
    if (relay.readyState === relay.OPEN) relay.close(1000);
  }
}

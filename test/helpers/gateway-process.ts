import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { listeningUrl } from '../../bench/listening.js';
import { packageRoot } from '../../src/paths.js';
import type { Teardown } from './gateway.js';

export interface GatewayProcess {
  child: ChildProcess;
  url: string;
}

/**
 * Runs `openshell gateway start` as its own process (compiled JS, as users
 * run it) and resolves with the URL it prints once listening.
 */
export async function spawnGateway(t: Teardown, args: string[], env: NodeJS.ProcessEnv = {}): Promise<GatewayProcess> {
  const child = spawn(process.execPath, [join(packageRoot(), 'bin', 'openshell.js'), 'gateway', 'start', ...args], {
    env: { ...process.env, OPENSHELL_LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  // Stopped like users stop it (SIGTERM, so it cleans up after itself), killed if it does not exit in 5 s.
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  });
  const url = await listeningUrl(child, 15_000);
  return { child, url };
}

export async function killHard(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;
}

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../src/log.js';
import { ExecRegistry, type ExecRegistryOptions } from '../../src/supervisor/exec-registry.js';
import type { Teardown } from './gateway.js';

export interface TempRegistry {
  dir: string;
  spoolDir: string;
  registry: ExecRegistry;
}

/**
 * An exec registry in a fresh temp dir (spools under `dir/spool`, execs run
 * in `dir` with the test's PATH), closed and removed at teardown.
 */
export async function tempRegistry(
  t: Teardown,
  prefix: string,
  opts: Partial<ExecRegistryOptions> & { env?: Record<string, string> } = {},
): Promise<TempRegistry> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  const spoolDir = join(dir, 'spool');
  const { env, ...rest } = opts;
  const registry = new ExecRegistry({
    log: silentLogger,
    spoolDir,
    baseEnv: () => ({ PATH: process.env.PATH ?? '/usr/bin:/bin', ...env }),
    defaultCwd: dir,
    ...rest,
  });
  t.teardown(async () => {
    await registry.close();
    await rm(dir, { recursive: true, force: true });
  });
  return { dir, spoolDir, registry };
}

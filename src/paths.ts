import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package root: the nearest directory above this module with a package.json. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('openshell: package.json not found above ' + fileURLToPath(import.meta.url));
    dir = parent;
  }
  return dir;
}

/**
 * The compiled supervisor. It always runs as plain JavaScript (never through a
 * TypeScript loader): it is on the create → Ready path.
 */
export function supervisorEntry(): string {
  return join(packageRoot(), 'dist', 'src', 'supervisor', 'main.js');
}

/**
 * V8 flag for the gateway and the supervisors: full GCs in one pause, without
 * incremental marking. Both processes move bulk output through short-lived
 * Buffers (external memory); with incremental marking, a heap near its limit
 * (a gateway after a few thousand execs) starts marking on that external
 * memory, objects allocated while marking survive it, and the next marking
 * starts at once: 20-30 mark-compacts per 512 MB and 3-5x the gateway's CPU
 * per byte, measured here. Without it, the same runs do none, only scavenges.
 */
export const NO_INCREMENTAL_MARKING = '--no-incremental-marking';

/**
 * Node flags for every supervisor process (drivers put them before the entry).
 * `--single-threaded-gc`: no GC helper threads. A sandbox gets a core or two
 * at most, shared with its own workload; parallel scavenges there cost more
 * CPU than they save, and their pauses showed as the egress proxy's p99.
 * `--no-incremental-marking`: see NO_INCREMENTAL_MARKING.
 */
export const SUPERVISOR_NODE_FLAGS: readonly string[] = (
  process.env.OPENSHELL_SUPERVISOR_NODE_FLAGS ?? `--single-threaded-gc ${NO_INCREMENTAL_MARKING}`
)
  .split(' ')
  .filter(Boolean);

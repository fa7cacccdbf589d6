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
 * Node flags for every supervisor process (drivers put them before the entry).
 * `--single-threaded-gc`: no GC helper threads. A sandbox gets a core or two
 * at most, shared with its own workload; parallel scavenges there cost more
 * CPU than they save, and their pauses showed as the egress proxy's p99.
 */
export const SUPERVISOR_NODE_FLAGS: readonly string[] = (process.env.OPENSHELL_SUPERVISOR_NODE_FLAGS ?? '--single-threaded-gc').split(' ').filter(Boolean);

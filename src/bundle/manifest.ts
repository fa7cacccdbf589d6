/**
 * The supervisor bundle's layout (`dist/bundle/`, built by `src/bundle/build.ts`)
 * and how a container driver starts it. Paths in the manifest are relative to
 * the bundle directory; every ELF file in it runs through the bundled loader.
 */
import { join } from 'node:path';
import { packageRoot } from '../paths.js';

export const BUNDLE_MANIFEST = 'bundle.json';
/** Where container drivers mount the bundle (read-only); also `OPENSHELL_BUNDLE_DIR` inside. */
export const BUNDLE_MOUNT = '/opt/openshell';

export interface BundleManifest {
  /** The dynamic loader every bundled binary runs through. */
  loader: string;
  /** The loader's `--library-path`. */
  libDir: string;
  node: string;
  /** The bundled supervisor (an ES module). */
  entry: string;
  /** Tool name → path; a tool missing on the build machine is left out. */
  tools: Record<string, string>;
}

/** The bundle this package built. */
export function bundleDir(): string {
  return join(packageRoot(), 'dist', 'bundle');
}

/**
 * The argv that starts the bundled supervisor from `dir` (as mounted in the
 * workload), with `nodeFlags` and the agent's command after `--`.
 */
export function supervisorArgv(manifest: BundleManifest, dir: string, nodeFlags: readonly string[], command: string[]): string[] {
  return [
    join(dir, manifest.loader),
    '--library-path',
    join(dir, manifest.libDir),
    join(dir, manifest.node),
    ...nodeFlags,
    join(dir, manifest.entry),
    '--',
    ...command,
  ];
}

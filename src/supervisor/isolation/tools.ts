import { accessSync, constants, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';

/** The well-kept tools the confinement runs. `sleep` is the process that holds the namespaces. */
export const TOOL_NAMES = ['bwrap', 'nsenter', 'setpriv', 'setsid', 'ip', 'nft', 'sleep'] as const;
export type ToolName = (typeof TOOL_NAMES)[number];

/** The Debian package each tool comes from (for messages and the bundle). */
export const TOOL_PACKAGES: Record<ToolName, string> = {
  bwrap: 'bubblewrap',
  nsenter: 'util-linux',
  setpriv: 'util-linux',
  setsid: 'util-linux',
  ip: 'iproute2',
  nft: 'nftables',
  sleep: 'coreutils',
};

/** How to run each tool: an argv prefix (the binary, or the bundle's loader running it). */
export type ToolSet = Record<ToolName, string[]>;

/** `bundle.json` of the supervisor bundle (see the Docker driver): tools run through the bundle's loader. */
interface BundleManifest {
  loader: string;
  libDir: string;
  tools: Partial<Record<ToolName, string>>;
}

/** Where each tool comes from, or which are missing. */
export interface ToolLookup {
  tools: Partial<ToolSet>;
  missing: ToolName[];
  /** Host paths the sandbox must see for tools that run inside it (the bundle's directory). */
  bundleDir: string | null;
}

/**
 * Finds the tools: in the supervisor bundle when `bundleDir` is set (an image
 * need not have them; they run through the bundle's dynamic loader so the
 * image's libc does not matter), else on `PATH` and the sbin directories.
 */
export function findTools(env: { PATH?: string }, bundleDir: string | null): ToolLookup {
  const tools: Partial<ToolSet> = {};
  const missing: ToolName[] = [];
  let manifest: BundleManifest | null = null;
  if (bundleDir) {
    try {
      manifest = JSON.parse(readFileSync(join(bundleDir, 'bundle.json'), 'utf8')) as BundleManifest;
    } catch {
      manifest = null;
    }
  }
  // PATH, and the sbin directories a user's PATH often lacks (ip, nft).
  const dirs = [...(env.PATH ?? '').split(delimiter), '/usr/sbin', '/sbin'].filter(Boolean);
  for (const name of TOOL_NAMES) {
    const bundled = manifest?.tools[name];
    if (manifest && bundled && executable(join(bundleDir!, bundled))) {
      tools[name] = [join(bundleDir!, manifest.loader), '--library-path', join(bundleDir!, manifest.libDir), join(bundleDir!, bundled)];
      continue;
    }
    const found = dirs.map((d) => join(d, name)).find(executable);
    if (found) tools[name] = [found];
    else missing.push(name);
  }
  return { tools, missing, bundleDir: manifest ? bundleDir : null };
}

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

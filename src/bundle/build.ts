/**
 * Builds the supervisor bundle (`dist/bundle/`): everything the supervisor
 * needs inside an image that has no Node and any libc (or none). The Node
 * binary, the confinement's tools and every shared library they link are
 * copied from this machine beside their dynamic loader; drivers run them
 * through that loader (`lib/ld-linux-x86-64.so.2 --library-path lib bin/node …`),
 * so the image's own libc never takes part. The supervisor itself is bundled
 * with esbuild; the native addons it loads are copied beside it with the
 * packages they require.
 *
 * Run after `tsc` (the `build` script): `node dist/src/bundle/build.js [out]`.
 */
import { execFileSync } from 'node:child_process';
import { accessSync, constants, copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, delimiter, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TOOL_NAMES, TOOL_PACKAGES, type ToolName } from '../supervisor/isolation/tools.js';
import { BUNDLE_MANIFEST, type BundleManifest } from './manifest.js';

/** The tools the confinement runs (bubblewrap, util-linux, iproute2, nftables, coreutils). */
export const BUNDLE_TOOLS = TOOL_NAMES;
/** npm packages the bundle keeps as files: native addons (and what they require), loaded at run time. */
const EXTERNAL_PACKAGES = ['bufferutil', 'node-pty', 'ssh2'];
/** Build-time dependencies of addons: headers, never required at run time. */
const BUILD_ONLY = new Set(['nan', 'node-addon-api']);

export interface BuildOptions {
  /** The package root (holds package.json, node_modules and the compiled dist/src). */
  root: string;
  /** Output directory (default `<root>/dist/bundle`). */
  out?: string;
  /** The Node binary to ship (default: the one running this). */
  node?: string;
  /** Fail when a tool is missing instead of leaving it out with a warning. */
  requireTools?: boolean;
}

export async function buildBundle(opts: BuildOptions): Promise<BundleManifest> {
  const root = resolve(opts.root);
  const out = resolve(opts.out ?? join(root, 'dist', 'bundle'));
  rmSync(out, { recursive: true, force: true });
  for (const dir of ['bin', 'lib', 'tools', 'supervisor']) mkdirSync(join(out, dir), { recursive: true });

  const { build } = await import('esbuild');
  await build({
    entryPoints: { main: join(root, 'dist', 'src', 'supervisor', 'main.js') },
    outdir: join(out, 'supervisor'),
    bundle: true,
    // Chunks keep the start-up lean: the exec engine, sshd and egress proxy load after the hello, as unbundled.
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    outExtension: { '.js': '.mjs' },
    chunkNames: 'chunks/[name]-[hash]',
    external: EXTERNAL_PACKAGES,
    // Bundled CommonJS (ws) calls require() for optional addons; an ES module has none of its own.
    banner: { js: "import { createRequire as __openshellRequire } from 'node:module'; const require = __openshellRequire(import.meta.url);" },
    legalComments: 'none',
    logLevel: 'warning',
  });

  const elves: string[] = [];
  for (const name of copyPackages(root, join(out, 'supervisor', 'node_modules'))) elves.push(...findAddons(name));

  const nodeSrc = realpathSync(opts.node ?? process.execPath);
  copyFileSync(nodeSrc, join(out, 'bin', 'node'));
  elves.push(nodeSrc);

  const tools: Record<string, string> = {};
  const missing: ToolName[] = [];
  for (const tool of BUNDLE_TOOLS) {
    const path = which(tool);
    if (!path) {
      missing.push(tool);
      continue;
    }
    copyFileSync(realpathSync(path), join(out, 'tools', tool));
    tools[tool] = `tools/${tool}`;
    elves.push(path);
  }
  if (missing.length) {
    const pkgs = [...new Set(missing.map((t) => TOOL_PACKAGES[t]))].join(' ');
    const message = `supervisor bundle: ${missing.join(', ')} not found on this machine (install ${pkgs}); the bundle leaves them out`;
    if (opts.requireTools) throw new Error(message);
    process.stderr.write(`warning: ${message}\n`);
  }

  const loader = copyLibraries(elves, join(out, 'lib'));
  const manifest: BundleManifest = {
    loader: `lib/${loader}`,
    libDir: 'lib',
    node: 'bin/node',
    entry: 'supervisor/main.mjs',
    tools,
  };
  writeFileSync(join(out, BUNDLE_MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
  return manifest;
}

/**
 * Copies the external packages and everything they require, transitively,
 * as node would resolve them from the package root; only what runs (scripts,
 * JSON, this platform's addons), no sources, build trees of objects or other
 * platforms' prebuilds. Returns the copied package directories.
 */
function copyPackages(root: string, dest: string): string[] {
  const copied = new Map<string, string>();
  const visit = (name: string, from: string, optional: boolean) => {
    if (copied.has(name) || BUILD_ONLY.has(name)) return;
    const dir = packageDir(name, from);
    if (!dir) {
      if (optional) return;
      throw new Error(`supervisor bundle: package ${name} not found (run npm install)`);
    }
    const target = join(dest, name);
    copied.set(name, target);
    cpSync(dir, target, { recursive: true, dereference: true, filter: (src) => keep(relative(dir, src), statSync(src).isDirectory()) });
    const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as {
      dependencies?: Record<string, string>;
      optionalDependencies?: Record<string, string>;
    };
    for (const dep of Object.keys(pkg.dependencies ?? {})) visit(dep, dir, false);
    for (const dep of Object.keys(pkg.optionalDependencies ?? {})) visit(dep, dir, true);
  };
  for (const name of EXTERNAL_PACKAGES) visit(name, root, false);
  return [...copied.values()];
}

/** Node's lookup: node_modules of the requiring package, then of each directory above it. */
function packageDir(name: string, from: string): string | null {
  for (let dir = from; ; dir = dirname(dir)) {
    const candidate = join(dir, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return candidate;
    if (dirname(dir) === dir) return null;
  }
}

function keep(rel: string, isDir: boolean): boolean {
  if (rel === '') return true;
  const parts = rel.split('/');
  const skipDirs = ['src', 'deps', 'third_party', 'test', 'tests', 'obj.target', '.deps', 'node_modules', 'scripts'];
  if (parts.some((p, i) => skipDirs.includes(p) && (i < parts.length - 1 || isDir))) return false;
  const prebuilds = parts.indexOf('prebuilds');
  if (prebuilds >= 0 && parts.length > prebuilds + 1 && parts[prebuilds + 1] !== `${process.platform}-${process.arch}`) return false;
  if (isDir) return true;
  const name = parts[parts.length - 1] as string;
  return /\.(c?js|mjs|json|node)$/.test(name) || /^LICENSE/i.test(name);
}

function findAddons(dir: string): string[] {
  const found: string[] = [];
  for (const entry of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile() && entry.name.endsWith('.node')) found.push(join(entry.parentPath, entry.name));
  }
  return found;
}

function which(cmd: string): string | null {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin', '/usr/bin', '/bin'];
  for (const dir of dirs) {
    if (!dir) continue;
    const path = join(dir, cmd);
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      // next
    }
  }
  return null;
}

/**
 * Copies every shared library the given ELF files link (ldd resolves them
 * transitively) into `dest` under their sonames, and the dynamic loader.
 * Returns the loader's file name.
 */
function copyLibraries(elves: string[], dest: string): string {
  let loader: string | null = null;
  const libs = new Map<string, string>();
  for (const elf of elves) {
    const listing = execFileSync('ldd', [elf], { encoding: 'utf8' });
    for (const line of listing.split('\n')) {
      const linked = /^\s*(\S+)\s+=>\s+(\/\S+)\s+\(/.exec(line);
      if (linked) {
        libs.set(linked[1] as string, linked[2] as string);
        continue;
      }
      const interp = /^\s*(\/\S*ld-linux\S*)\s+\(/.exec(line);
      if (interp) {
        const path = interp[1] as string;
        if (loader && basename(path) !== basename(loader)) throw new Error(`supervisor bundle: two dynamic loaders (${loader}, ${path})`);
        loader = path;
      }
    }
  }
  if (!loader) throw new Error('supervisor bundle: no dynamic loader found (is node dynamically linked?)');
  for (const [soname, path] of libs) copyFileSync(realpathSync(path), join(dest, soname));
  const loaderName = basename(loader);
  copyFileSync(realpathSync(loader), join(dest, loaderName));
  return loaderName;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === realpathSync(process.argv[1])) {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
  buildBundle({ root, out: process.argv[2], requireTools: process.env.OPENSHELL_BUNDLE_REQUIRE_TOOLS === '1' }).then(
    (manifest) => process.stdout.write(`supervisor bundle: ${Object.keys(manifest.tools).length} tools, entry ${manifest.entry}\n`),
    (err: unknown) => {
      process.stderr.write(`${(err as Error).message}\n`);
      process.exit(1);
    },
  );
}

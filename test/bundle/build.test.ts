import { execFile } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { BUNDLE_MANIFEST, bundleDir, supervisorArgv, type BundleManifest } from '../../src/bundle/manifest.js';

const run = promisify(execFile);
const dir = bundleDir();

if (!existsSync(join(dir, BUNDLE_MANIFEST))) {
  t.plan(0, `no supervisor bundle at ${dir} (npm run build makes it)`);
} else {
  const manifest = JSON.parse(readFileSync(join(dir, BUNDLE_MANIFEST), 'utf8')) as BundleManifest;

  t.test('the manifest keeps to the contract the confinement reads', async (t) => {
    t.match(manifest, { loader: 'lib/ld-linux-x86-64.so.2', libDir: 'lib', node: 'bin/node', entry: 'supervisor/main.mjs' });
    for (const tool of ['bwrap', 'nsenter', 'setpriv', 'setsid', 'ip', 'nft', 'sleep']) {
      t.equal(manifest.tools[tool], `tools/${tool}`, `${tool} bundled`);
      accessSync(join(dir, `tools/${tool}`), constants.X_OK);
    }
    for (const lib of ['libc.so.6', 'libstdc++.so.6', 'libcap.so.2', 'libnftables.so.1']) t.ok(existsSync(join(dir, 'lib', lib)), lib);
  });

  t.test('every bundled binary runs through the bundled loader alone', async (t) => {
    const through = (file: string, ...args: string[]) =>
      run(join(dir, manifest.loader), ['--library-path', join(dir, manifest.libDir), join(dir, file), ...args], { env: {} });
    t.match((await through(manifest.node, '--version')).stdout, /^v20\./);
    t.match((await through('tools/bwrap', '--version')).stdout, /bubblewrap/);
    t.match((await through('tools/setpriv', '--version')).stdout, /util-linux/);
    t.match((await through('tools/ip', '-V')).stdout, /iproute2/);
    t.match((await through('tools/nft', '--version')).stdout, /nftables/);
  });

  t.test('the bundled supervisor loads every module and native addon (--check)', async (t) => {
    const [file, ...args] = supervisorArgv(manifest, dir, [], []).slice(0, -1) as [string, ...string[]];
    const { stdout } = await run(file, [...args, '--check'], { env: {} });
    const report = JSON.parse(stdout) as { addons: string[] };
    for (const addon of ['bufferutil.node', 'pty.node', 'sshcrypto.node']) t.ok(report.addons.includes(addon), `${addon} mapped`);
  });
}

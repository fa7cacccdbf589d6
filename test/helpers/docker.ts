/**
 * A real Docker engine for the docker driver's tests: its own dockerd (own
 * data root, exec root and socket, no bridge, no iptables) started by the
 * first test file that needs it and stopped by tap's `after` script
 * (test/helpers/docker-stop.ts) once no tap run holds a lease on it. The
 * images come from root filesystems that scripts/docker-test-setup.sh
 * cached (no registry is reachable: nothing is pulled).
 */
import { execFile, spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const CACHE = process.env.OPENSHELL_TEST_CACHE ?? '/var/cache/openshell-test';
export const ENGINE_DIR = join(CACHE, 'dockerd');
export const SOCKET = join(ENGINE_DIR, 'docker.sock');
export const DOCKER_HOST = `unix://${SOCKET}`;
const PIDFILE = join(ENGINE_DIR, 'dockerd.pid');
const LEASES = join(ENGINE_DIR, 'leases');
const LOCK = join(ENGINE_DIR, 'start.lock');

/** The test images and the marker file baked into each. */
export const IMAGE_VERSION = 2;
export const IMAGES = { debian: `openshell-test/debian:v${IMAGE_VERSION}`, busybox: `openshell-test/busybox:v${IMAGE_VERSION}` } as const;
/** Baked into each image (also at /etc/openshell-test-image); under /usr, which a confined sandbox sees. */
export const MARKER = '/usr/share/openshell-test-image';
const tarOf = (name: string) => join(CACHE, `${name}-v${IMAGE_VERSION}.tar`);

export interface Engine {
  host: string;
  /** Runs the docker CLI against the test engine. */
  docker(...args: string[]): Promise<string>;
}

/** The test engine, started if need be; or the reason the docker tests must skip. */
export async function dockerEngine(): Promise<Engine | { skip: string }> {
  for (const bin of ['dockerd', 'docker']) {
    if (!(await which(bin))) return { skip: `${bin} not installed (scripts/docker-test-setup.sh installs docker.io)` };
  }
  for (const name of Object.keys(IMAGES)) {
    if (!existsSync(tarOf(name))) return { skip: `${tarOf(name)} missing (run scripts/docker-test-setup.sh)` };
  }
  mkdirSync(LEASES, { recursive: true });
  // The tap runner is this file's parent: its after script releases the lease.
  writeFileSync(join(LEASES, String(process.ppid)), '');
  try {
    await ensureDaemon();
    await ensureImages();
  } catch (err) {
    return { skip: `the test dockerd did not start: ${(err as Error).message} (log: ${join(ENGINE_DIR, 'dockerd.log')})` };
  }
  return { host: DOCKER_HOST, docker };
}

export async function docker(...args: string[]): Promise<string> {
  const { stdout } = await run('docker', args, { env: { ...process.env, DOCKER_HOST }, maxBuffer: 64 * 1024 * 1024 });
  return stdout;
}

async function ping(): Promise<boolean> {
  try {
    await run('docker', ['version', '--format', '{{.Server.Version}}'], { env: { ...process.env, DOCKER_HOST }, timeout: 5000 });
    return true;
  } catch {
    return false;
  }
}

async function ensureDaemon(): Promise<void> {
  if (await ping()) return;
  // Two test files may ask at once: one starts the daemon, the other waits for it.
  let lock: number | null = null;
  try {
    lock = openSync(LOCK, 'wx');
  } catch {
    if (!lockHolderAlive()) {
      rmSync(LOCK, { force: true });
      return ensureDaemon();
    }
  }
  try {
    if (lock !== null) {
      writeFileSync(LOCK, String(process.pid));
      if (!(await ping())) startDaemon();
    }
    const deadline = Date.now() + 60_000;
    for (let delay = 50; !(await ping()); delay = Math.min(delay * 2, 500)) {
      if (Date.now() > deadline) throw new Error('no answer on its socket in 60 s');
      await new Promise((r) => setTimeout(r, delay));
    }
  } finally {
    if (lock !== null) {
      closeSync(lock);
      rmSync(LOCK, { force: true });
    }
  }
}

function lockHolderAlive(): boolean {
  try {
    process.kill(Number(readFileSync(LOCK, 'utf8')), 0);
    return true;
  } catch {
    return false;
  }
}

function startDaemon(): void {
  const log = openSync(join(ENGINE_DIR, 'dockerd.log'), 'a');
  const child = spawn(
    'dockerd',
    [
      '--data-root', join(ENGINE_DIR, 'data'),
      '--exec-root', '/run/openshell-test-docker',
      '-H', DOCKER_HOST,
      '--pidfile', PIDFILE,
      '--bridge=none', '--iptables=false', '--ip6tables=false',
      '--log-level=warn',
    ],
    { detached: true, stdio: ['ignore', log, log] },
  );
  child.unref();
  closeSync(log);
}

async function ensureImages(): Promise<void> {
  for (const [name, tag] of Object.entries(IMAGES)) {
    try {
      await docker('image', 'inspect', '--format', '{{.Id}}', tag);
    } catch {
      await docker('import', tarOf(name), tag);
    }
  }
}

/**
 * Releases this tap run's lease and stops the daemon when no live run holds
 * one (called by the after script).
 */
export async function releaseEngine(runner = process.ppid): Promise<void> {
  if (!existsSync(LEASES)) return;
  rmSync(join(LEASES, String(runner)), { force: true });
  const live = readdirSync(LEASES).filter((pid) => {
    try {
      process.kill(Number(pid), 0);
      return true;
    } catch {
      rmSync(join(LEASES, pid), { force: true });
      return false;
    }
  });
  if (live.length) return;
  let pid: number;
  try {
    pid = Number(readFileSync(PIDFILE, 'utf8'));
  } catch {
    return;
  }
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  process.kill(pid, 'SIGKILL');
}

async function which(bin: string): Promise<boolean> {
  try {
    await run('sh', ['-c', `command -v ${bin}`]);
    return true;
  } catch {
    return false;
  }
}

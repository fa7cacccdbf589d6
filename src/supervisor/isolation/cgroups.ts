import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Resources } from '../../schemas/sandbox.js';

/** The controllers `resources` need, and the files that carry each limit. */
type Controller = 'memory' | 'pids' | 'cpu';

interface Hierarchy {
  /** The cgroup directory made for the sandbox in this hierarchy. */
  dir: string;
  /** The supervisor's own cgroup in it, to move back to after a spawn. */
  home: string;
  version: 1 | 2;
  controllers: Controller[];
}

/** Thrown when the host cannot enforce what `resources` ask for. */
export class CgroupError extends Error {
  override name = 'CgroupError';
}

const GROUP = 'openshell';

/** What `resources` need of cgroups (diskMb is not a cgroup limit). */
export function neededControllers(r: Resources): Controller[] {
  const out: Controller[] = [];
  if (r.memoryMb !== undefined) out.push('memory');
  if (r.pids !== undefined) out.push('pids');
  if (r.cpus !== undefined) out.push('cpu');
  return out;
}

/**
 * One sandbox's cgroup, in whichever hierarchy has each controller (v1, v2,
 * or a hybrid of both, as on these machines). Processes join it at fork:
 * the supervisor moves itself in around each spawn (`enter`/`leave`, a few
 * hundred microseconds), so the child starts inside with no window in which
 * it or a fork of it runs unlimited. The supervisor's oom_score_adj is -1000,
 * so an out-of-memory kill inside never picks it.
 */
export class SandboxCgroup {
  readonly #hierarchies: Hierarchy[];
  readonly #pid = String(process.pid);

  private constructor(hierarchies: Hierarchy[]) {
    this.#hierarchies = hierarchies;
  }

  /** Makes the sandbox's cgroup with its limits. Null when `resources` need none. */
  static create(sandboxId: string, r: Resources): SandboxCgroup | null {
    const wanted = neededControllers(r);
    if (wanted.length === 0) return null;
    const found = locate(wanted);
    const missing = wanted.filter((c) => !found.some((h) => h.controllers.includes(c)));
    if (missing.length > 0) {
      throw new CgroupError(`cgroup controller${missing.length > 1 ? 's' : ''} ${missing.join(', ')} not available (resources need them)`);
    }
    const made: Hierarchy[] = [];
    try {
      for (const h of found) {
        const parent = join(h.mount, GROUP);
        mkdirSync(parent, { recursive: true });
        if (h.version === 2) enableV2(h.mount, parent, h.controllers);
        const dir = join(parent, sandboxId);
        mkdirSync(dir, { recursive: true });
        made.push({ dir, home: join(h.mount, h.home), version: h.version, controllers: h.controllers });
      }
      for (const h of made) for (const c of h.controllers) applyLimit(h, c, r);
    } catch (err) {
      for (const h of made) tryRmdir(h.dir);
      if (err instanceof CgroupError) throw err;
      throw new CgroupError(`cannot set up the sandbox's cgroup: ${(err as Error).message}`, { cause: err });
    }
    try {
      writeFileSync('/proc/self/oom_score_adj', '-1000');
    } catch {
      // not permitted here: the limits still hold
    }
    return new SandboxCgroup(made);
  }

  /** Moves this process into the sandbox's cgroup; a child forked now starts there. Pair with `leave`. */
  enter(): void {
    for (const h of this.#hierarchies) writeFileSync(join(h.dir, 'cgroup.procs'), this.#pid);
  }

  leave(): void {
    for (const h of this.#hierarchies) {
      try {
        writeFileSync(join(h.home, 'cgroup.procs'), this.#pid);
      } catch {
        // our old cgroup is gone: stay where we are rather than fail the spawn
      }
    }
  }

  /** Runs `fn` (a synchronous spawn) with this process inside the cgroup. */
  around<T>(fn: () => T): T {
    this.enter();
    try {
      return fn();
    } finally {
      this.leave();
    }
  }

  /** Paths, for the Isolated condition and the logs. */
  describe(): string {
    return this.#hierarchies.map((h) => `${h.dir} (v${h.version}: ${h.controllers.join(',')})`).join('; ');
  }

  /** Removes the cgroup once its processes are gone (bounded retries: exiting processes leave it a moment later). */
  async remove(): Promise<void> {
    for (const h of this.#hierarchies) {
      for (let i = 0; i < 40 && existsSync(h.dir); i++) {
        if (tryRmdir(h.dir)) break;
        await new Promise((r) => setTimeout(r, 25));
      }
    }
  }
}

/** Removes a sandbox's cgroups left by a supervisor that was killed (the process driver calls this on delete). */
export function removeSandboxCgroups(sandboxId: string): void {
  for (const h of locate(['memory', 'pids', 'cpu'])) tryRmdir(join(h.mount, GROUP, sandboxId));
}

interface Found {
  mount: string;
  /** The supervisor's cgroup path in this hierarchy (from /proc/self/cgroup). */
  home: string;
  version: 1 | 2;
  controllers: Controller[];
}

/** For each wanted controller, the hierarchy that has it: a v1 mount of its own, else the v2 unified one. */
function locate(wanted: Controller[]): Found[] {
  let mounts: string[][] = [];
  let self: string[] = [];
  try {
    mounts = readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' '));
    self = readFileSync('/proc/self/cgroup', 'utf8').split('\n');
  } catch {
    return [];
  }
  const out: Found[] = [];
  const left = new Set(wanted);
  for (const c of wanted) {
    const m = mounts.find((f) => f[2] === 'cgroup' && (f[3] ?? '').split(',').includes(c));
    if (!m) continue;
    const line = self.find((l) => (l.split(':')[1] ?? '').split(',').includes(c));
    out.push({ mount: m[1]!, home: line?.split(':')[2] ?? '/', version: 1, controllers: [c] });
    left.delete(c);
  }
  if (left.size > 0) {
    const m = mounts.find((f) => f[2] === 'cgroup2');
    if (m) {
      let available: string[] = [];
      try {
        available = readFileSync(join(m[1]!, 'cgroup.controllers'), 'utf8').trim().split(/\s+/);
      } catch {
        // none
      }
      const here = [...left].filter((c) => available.includes(c));
      const line = self.find((l) => l.startsWith('0::'));
      if (here.length > 0) out.push({ mount: m[1]!, home: line?.slice(3) ?? '/', version: 2, controllers: here });
    }
  }
  return out;
}

function enableV2(mount: string, parent: string, controllers: Controller[]): void {
  const add = controllers.map((c) => `+${c}`).join(' ');
  for (const dir of [mount, parent]) {
    const enabled = readFileSync(join(dir, 'cgroup.subtree_control'), 'utf8');
    if (controllers.every((c) => enabled.split(/\s+/).includes(c))) continue;
    writeFileSync(join(dir, 'cgroup.subtree_control'), add);
  }
}

function applyLimit(h: Hierarchy, c: Controller, r: Resources): void {
  const set = (file: string, value: string): void => writeFileSync(join(h.dir, file), value);
  if (c === 'memory') {
    const bytes = String(r.memoryMb! * 1024 * 1024);
    if (h.version === 1) {
      set('memory.limit_in_bytes', bytes);
      // With swap accounting, swap counts too: a hog is killed at the limit, not swapped out.
      if (existsSync(join(h.dir, 'memory.memsw.limit_in_bytes'))) set('memory.memsw.limit_in_bytes', bytes);
    } else {
      set('memory.max', bytes);
      if (existsSync(join(h.dir, 'memory.swap.max'))) set('memory.swap.max', '0');
    }
  } else if (c === 'pids') {
    set('pids.max', String(r.pids));
  } else {
    const period = 100_000;
    const quota = Math.max(1000, Math.round(r.cpus! * period));
    if (h.version === 1) {
      set('cpu.cfs_period_us', String(period));
      set('cpu.cfs_quota_us', String(quota));
    } else {
      set('cpu.max', `${quota} ${period}`);
    }
  }
}

function tryRmdir(dir: string): boolean {
  try {
    rmdirSync(dir);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT';
  }
}

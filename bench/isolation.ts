/**
 * Isolation on and off in the same run: two gateways of the same build, one
 * `--isolation auto` (confined sandboxes), one `--isolation none`.
 *
 * - exec round trip: sequential `true` execs, interleaved round-robin over a
 *   confined sandbox, an unconfined one and a second confined one (the A/A:
 *   the same thing twice, so the spread of the machine shows beside the ratio);
 * - create → Ready with the warm pool, sequential, both modes alternating;
 * - memory per idle confined sandbox for its namespaces and init: the PSS of
 *   bwrap's monitor, the sandbox's PID 1 and the holder (the processes the
 *   confinement adds), and the supervisors' RSS in both modes.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { createSandbox, deleteAllSandboxes, execJson, pct, progress, request, rssKiB, startGateway, stopChild, supervisorPids, waitReady } from './lib.js';

export interface IsolationBench {
  execP50: { confined: number; unconfined: number; confinedAA: number };
  createP50: { confined: number; unconfined: number };
  createP95: { confined: number; unconfined: number };
  /** KiB of PSS per idle confined sandbox in the confinement's own processes. */
  confinementPssKiB: number;
  supervisorRssKiB: { confined: number; unconfined: number };
  samples: { exec: number; create: number; idle: number };
}

/** Proportional set size of a process (its share of shared pages), KiB. */
function pssKiB(pid: number): number {
  try {
    const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** Every descendant of `pid` (children files of /proc, recursively). */
function descendants(pid: number): number[] {
  const out: number[] = [];
  const walk = (p: number): void => {
    let kids: number[] = [];
    try {
      for (const tid of readdirSync(`/proc/${p}/task`)) {
        kids.push(...readFileSync(`/proc/${p}/task/${tid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number));
      }
    } catch {
      kids = [];
    }
    for (const k of kids) {
      out.push(k);
      walk(k);
    }
  };
  walk(pid);
  return out;
}

function comm(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

async function ids(base: string, names: string[]): Promise<string[]> {
  const list = await request('GET', `${base}/v1/sandboxes`);
  return (list.body?.sandboxes ?? []).filter((s: { name: string }) => names.includes(s.name)).map((s: { id: string }) => s.id);
}

export async function runIsolationBench(tmpRoot: string, quick: boolean): Promise<IsolationBench> {
  const execN = quick ? 60 : 300;
  const createN = quick ? 6 : 20;
  const idleN = quick ? 5 : 20;
  const dirs = { on: path.join(tmpRoot, 'iso-on'), off: path.join(tmpRoot, 'iso-off') };
  await Promise.all([mkdir(dirs.on, { recursive: true }), mkdir(dirs.off, { recursive: true })]);
  const on = await startGateway(dirs.on, ['--port', '0', '--isolation', 'auto']);
  const off = await startGateway(dirs.off, ['--port', '0', '--isolation', 'none']);
  try {
    // exec round trip, interleaved
    for (const [gw, name] of [[on, 'ex-a'], [off, 'ex-u'], [on, 'ex-b']] as const) {
      await createSandbox(gw.url, name);
      await waitReady(gw.url, name);
    }
    const boxes = [
      { gw: on, name: 'ex-a', lat: [] as number[] },
      { gw: off, name: 'ex-u', lat: [] as number[] },
      { gw: on, name: 'ex-b', lat: [] as number[] },
    ];
    for (let i = 0; i < 20; i++) for (const b of boxes) await execJson(b.gw.url, b.name, ['true']);
    for (let i = 0; i < execN; i++) {
      for (const b of boxes) {
        const t = performance.now();
        const res = await execJson(b.gw.url, b.name, ['true']);
        if (res.status !== 200 || res.body?.exitCode !== 0) throw new Error(`exec in ${b.name}: HTTP ${res.status}`);
        b.lat.push(performance.now() - t);
      }
    }
    progress(`isolation exec p50: confined ${pct(boxes[0]!.lat, 50).toFixed(2)} / unconfined ${pct(boxes[1]!.lat, 50).toFixed(2)} / confined A/A ${pct(boxes[2]!.lat, 50).toFixed(2)} ms`);

    // create → Ready, alternating modes (the warm pool refills between creates)
    const create = { on: [] as number[], off: [] as number[] };
    for (let i = 0; i < createN; i++) {
      for (const [gw, key] of [[on, 'on'], [off, 'off']] as const) {
        const name = `cr-${key}-${i}`;
        const t = Date.now();
        await createSandbox(gw.url, name);
        const at = await waitReady(gw.url, name);
        create[key].push(at - t);
        await new Promise((r) => setTimeout(r, 300));
      }
    }
    progress(`isolation create→Ready p50: confined ${pct(create.on, 50)} / unconfined ${pct(create.off, 50)} ms`);

    // memory of idle sandboxes
    const idle = { on: [] as string[], off: [] as string[] };
    for (let i = 0; i < idleN; i++) {
      for (const [gw, key] of [[on, 'on'], [off, 'off']] as const) {
        const name = `idle-${key}-${i}`;
        await createSandbox(gw.url, name);
        await waitReady(gw.url, name);
        await execJson(gw.url, name, ['true']);
        idle[key].push(name);
      }
    }
    await new Promise((r) => setTimeout(r, 3000));
    const sup = { on: supervisorPids(await ids(on.url, idle.on)), off: supervisorPids(await ids(off.url, idle.off)) };
    const confinement = sup.on.map((p) => descendants(p).filter((d) => ['bwrap', 'sleep'].includes(comm(d))).reduce((s, d) => s + pssKiB(d), 0));
    const avg = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / Math.max(1, xs.length);
    return {
      execP50: { confined: pct(boxes[0]!.lat, 50), unconfined: pct(boxes[1]!.lat, 50), confinedAA: pct(boxes[2]!.lat, 50) },
      createP50: { confined: pct(create.on, 50), unconfined: pct(create.off, 50) },
      createP95: { confined: pct(create.on, 95), unconfined: pct(create.off, 95) },
      confinementPssKiB: avg(confinement),
      supervisorRssKiB: { confined: avg(sup.on.map(rssKiB)), unconfined: avg(sup.off.map(rssKiB)) },
      samples: { exec: execN, create: createN, idle: idleN },
    };
  } finally {
    await Promise.allSettled([deleteAllSandboxes(on.url), deleteAllSandboxes(off.url)]);
    await Promise.allSettled([stopChild(on.child), stopChild(off.child)]);
  }
}

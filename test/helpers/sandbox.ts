import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { waitForPhase } from './gateway.js';

/** The supervisor pid the process driver recorded for a sandbox. */
export function supervisorPid(stateDir: string, sandboxId: string): number {
  const file = join(stateDir, 'sandboxes', sandboxId, 'supervisor.json');
  return (JSON.parse(readFileSync(file, 'utf8')) as { pid: number }).pid;
}

/**
 * A Ready sandbox (created here) whose supervisor is frozen with SIGSTOP: it
 * answers no relay open until `resume()` (or the test's teardown) sends SIGCONT.
 */
export async function frozenSandbox(
  t: { teardown(fn: () => unknown): void },
  gw: { url: string; stateDir: string; app: Parameters<typeof waitForPhase>[0] },
  name: string,
): Promise<{ id: string; pid: number; resume: () => void }> {
  const res = await fetch(new URL('/v1/sandboxes', gw.url), {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name }),
  });
  const { id } = (await res.json()) as { id: string };
  await waitForPhase(gw.app, name, 'Ready');
  const pid = supervisorPid(gw.stateDir, id);
  process.kill(pid, 'SIGSTOP');
  const resume = () => process.kill(pid, 'SIGCONT');
  t.teardown(resume);
  return { id, pid, resume };
}

/** Reads one variable of a live process's environment (Linux /proc). */
export function processEnv(pid: number, name: string): string | undefined {
  const entries = readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0');
  const hit = entries.find((e) => e.startsWith(`${name}=`));
  return hit?.slice(name.length + 1);
}

/** The sandbox token, as handed to a cold-started supervisor (gateways with `warmSupervisors: 0`). */
export function sandboxToken(stateDir: string, sandboxId: string): string {
  const token = processEnv(supervisorPid(stateDir, sandboxId), 'OPENSHELL_SANDBOX_TOKEN');
  if (!token) throw new Error(`no token in the environment of ${sandboxId}'s supervisor`);
  return token;
}

/** Pids of every live supervisor process of a sandbox (to count duplicates): their title names the sandbox. */
export function supervisorsOf(sandboxId: string): number[] {
  const found = new Map<number, number>();
  for (const entry of readdirSafe('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'latin1');
      if (!cmdline.startsWith(`openshell-supervisor ${sandboxId}`)) continue;
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (!fields[0]!.startsWith('Z')) found.set(Number(entry), Number(fields[1]));
    } catch {
      // raced with exit
    }
  }
  // A supervisor's child between fork and exec (it spawns the confinement's tools) still bears its title.
  return [...found.keys()].filter((pid) => !found.has(found.get(pid)!));
}

function readdirSafe(dir: string): string[] {
  try {
    return readdirSyncCompat(dir);
  } catch {
    return [];
  }
}

import { readdirSync as readdirSyncCompat } from 'node:fs';

/**
 * Takes over a sandbox's control session: a WebSocket that says hello with
 * the sandbox's own token (superseding its supervisor) and answers nothing
 * unless the test says so. Resolves after the welcome; terminated at teardown.
 */
export async function fakeSession(
  t: { teardown(fn: () => unknown): void },
  gw: { url: string; stateDir: string },
  sandboxId: string,
  version = 'test',
): Promise<{ ws: WebSocket; sessionId: string }> {
  const ws = new WebSocket(`${gw.url.replace(/^http/, 'ws')}/v1/supervisor/session`, {
    headers: { authorization: `Bearer ${sandboxToken(gw.stateDir, sandboxId)}` },
  });
  t.teardown(() => ws.terminate());
  await once(ws, 'open');
  ws.send(JSON.stringify({ type: 'hello', sandboxId, version, capabilities: [] }));
  const [welcome] = (await once(ws, 'message')) as [Buffer];
  return { ws, sessionId: (JSON.parse(welcome.toString()) as { sessionId: string }).sessionId };
}

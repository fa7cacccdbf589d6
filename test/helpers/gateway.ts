import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { buildApp, listenUrl } from '../../src/app.js';
import { testConfig, type Config } from '../../src/config.js';
import type { GatewayDeps } from '../../src/gateway.js';
import type { Phase, Sandbox } from '../../src/schemas/sandbox.js';

export interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface TestGateway {
  app: FastifyInstance;
  url: string;
  config: Config;
  stateDir: string;
}

/** A fresh temp dir removed at teardown. */
export function tempDir(t: Teardown, prefix = 'openshell-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * Starts a real gateway on 127.0.0.1:0 with the process driver. At teardown
 * every sandbox's supervisor is stopped, the app closed, the state dir removed.
 */
export async function startGateway(
  t: Teardown,
  overrides: Partial<Config> = {},
  deps: GatewayDeps = {},
): Promise<TestGateway> {
  const stateDir = overrides.stateDir ?? tempDir(t);
  const config = testConfig({ stateDir, ...overrides });
  const app = await buildApp(config, deps);
  t.teardown(async () => {
    const gw = app.openshell;
    const records = await gw.store.list().catch(() => []);
    await Promise.allSettled(records.map((r) => gw.driver.delete(r.id)));
    await app.close();
  });
  await app.listen({ host: config.host, port: config.port });
  return { app, url: listenUrl(app, config), config, stateDir };
}

/** Resolves with the sandbox once it reaches `phase` (watching service events, no polling). */
export function waitForPhase(app: FastifyInstance, name: string, phase: Phase, timeoutMs = 10_000): Promise<Sandbox> {
  return waitForSandbox(app, name, (s) => s.phase === phase, phase, timeoutMs);
}

/** Resolves with the sandbox once `accept` holds for it (watching service events, no polling). */
export function waitForSandbox(
  app: FastifyInstance,
  name: string,
  accept: (s: Sandbox) => boolean,
  what: string,
  timeoutMs = 10_000,
): Promise<Sandbox> {
  const service = app.openshell.sandboxes;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      service.get(name).then(
        (s) => reject(new Error(`sandbox ${name} not ${what} after ${timeoutMs} ms (phase ${s.phase}, ${s.conditions[0]?.reason})`)),
        reject,
      );
    }, timeoutMs);
    const check = (s: Sandbox) => {
      if (!accept(s)) return;
      clearTimeout(timer);
      off();
      resolve(s);
    };
    const off = service.on('change', (r) => {
      if (r.name === name) void service.get(name).then(check, () => undefined);
    });
    service.get(name).then(check, () => undefined);
  });
}

/** JSON request helper on a real socket. */
export async function api<T = unknown>(
  base: string,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: T }> {
  const res = await fetch(new URL(path, base), {
    method,
    headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : null) as T };
}

/** Resolves true once every pid is gone (exited or a zombie), false after `timeoutMs`. */
export async function allGone(pids: number[], timeoutMs = 5000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (pids.some(running)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

/** Alive and not a zombie (a zombie has exited; only its reaping is pending). */
export function running(pid: number): boolean {
  if (!alive(pid)) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return false;
  }
}

/** Whether a process (or, with a negative pid, a process group) exists. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Puts a real TCP fault proxy between supervisors and the gateway: sandboxes
 * created from now on dial the proxy (as if `--sandbox-endpoint` named it).
 */
export async function proxySupervisors(t: Teardown, gw: TestGateway): Promise<TcpProxy> {
  const port = Number(new URL(gw.url).port);
  const proxy = await startTcpProxy({ host: '127.0.0.1', port });
  t.teardown(() => proxy.close());
  gw.app.openshell.config.sandboxEndpoint = `http://127.0.0.1:${proxy.port}`;
  return proxy;
}

import { startTcpProxy, type TcpProxy } from './tcp-proxy.js';

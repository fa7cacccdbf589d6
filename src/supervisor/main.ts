/**
 * The in-sandbox supervisor (`openshell supervisor [-- command…]`). Started
 * by a compute driver with OPENSHELL_SANDBOX_ID, OPENSHELL_SANDBOX_TOKEN and
 * OPENSHELL_ENDPOINT. Start-up imports stay lean: this process is on the
 * create → Ready path; the exec engine, sshd and egress proxy load after the
 * control session is dialed.
 *
 * `--warm` (the process driver's warm pool): load everything, say so with one
 * byte on stdout, and wait for one JSON assignment on stdin (environment,
 * working directory, log file, command) to become that sandbox's supervisor.
 * EOF before an assignment (the gateway went away) ends the process.
 *
 * `--check`: load every module and native addon the supervisor uses, print
 * what loaded as one JSON line and exit (proves a bundle works in an image).
 */
import { openSync, readFileSync, writeSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { Supervisor, supervisorOptionsFromEnv } from './supervisor.js';
import { createSupervisorLogger } from './log.js';

export interface RunOptions {
  /** File descriptor for the supervisor's logs and the entrypoint's stdout/stderr (default: inherit). */
  stdioFd?: number;
}

export async function runSupervisor(argv: string[], env: NodeJS.ProcessEnv, run: RunOptions = {}): Promise<Supervisor> {
  const dash = argv.indexOf('--');
  const command = dash >= 0 ? argv.slice(dash + 1) : argv;
  const options = supervisorOptionsFromEnv(env, command);
  process.title = `openshell-supervisor ${options.sandboxId}`;
  let supervisor: Supervisor | undefined;
  if (run.stdioFd !== undefined) {
    const fd = run.stdioFd;
    options.stdioFd = fd;
    options.log = createSupervisorLogger({
      bindings: { sandboxId: options.sandboxId },
      write: (bytes) => writeSync(fd, bytes),
      sink: (bytes, start, end, level) => supervisor?.forwardLog(bytes, start, end, level),
    });
  }
  supervisor = new Supervisor(options);
  void supervisor.start();
  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    const force = setTimeout(() => process.exit(1), 5000).unref();
    (supervisor as Supervisor).close(`signal ${signal}`).then(
      () => {
        clearTimeout(force);
        process.exit(0);
      },
      () => process.exit(1),
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  // Stopped itself: its sandbox is gone and nothing would ever adopt it.
  void supervisor.gone.then(() => process.exit(0));
  return supervisor;
}

/** Waits warm for an assignment, then runs as that sandbox's supervisor. */
export async function runWarm(): Promise<Supervisor | null> {
  // Pay for module loading now, before any sandbox is waiting, and say so on stdout (the driver
  // prefers loaded ones). An assignment that comes first does not wait: the session is dialed
  // while the rest loads, so a warm supervisor taken early is no slower than a cold one.
  process.stdout.on('error', () => undefined);
  void Promise.all([import('../egress/index.js'), import('./exec-registry.js'), import('./exec-relay.js'), import('./isolation/confinement.js')]).then(
    () => process.stdout.write('1'),
    () => undefined,
  );
  const line = await readLine(process.stdin);
  if (!line) return null;
  const assignment = JSON.parse(line) as { env: Record<string, string>; cwd: string; logFile: string; command: string[] };
  for (const key of Object.keys(process.env)) delete process.env[key];
  Object.assign(process.env, assignment.env);
  process.chdir(assignment.cwd);
  const fd = openSync(assignment.logFile, 'a', 0o600);
  return runSupervisor(['--', ...assignment.command], process.env, { stdioFd: fd });
}

/** Loads what a sandbox's supervisor loads lazily; answers with the native addons mapped into this process. */
export async function checkSupervisor(): Promise<{ version: string; node: string; addons: string[] }> {
  const [{ SUPERVISOR_VERSION }] = await Promise.all([
    import('./supervisor.js'),
    import('../egress/index.js'),
    import('./exec-registry.js'),
    import('./exec-relay.js'),
    import('./sshd.js'),
    import('./pty.js'),
    // ws loads it on first use and falls back to JavaScript silently; the map below tells which.
    import('bufferutil' as string),
  ]);
  const maps = readFileSync('/proc/self/maps', 'utf8');
  const addons = [...new Set(maps.match(/[^/\s]+\.node$/gm) ?? [])].sort();
  return { version: SUPERVISOR_VERSION, node: process.version, addons };
}

function readLine(stream: NodeJS.ReadableStream): Promise<string | null> {
  return new Promise((resolve) => {
    let buffer = '';
    const onData = (chunk: Buffer) => {
      buffer += chunk.toString();
      const nl = buffer.indexOf('\n');
      if (nl >= 0) {
        done(buffer.slice(0, nl));
      }
    };
    const done = (value: string | null) => {
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.pause();
      resolve(value);
    };
    const onEnd = () => done(buffer.trim() ? buffer : null);
    stream.on('data', onData);
    stream.once('end', onEnd);
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const argv = process.argv.slice(2);
  const fail = (err: unknown) => {
    process.stderr.write(`openshell supervisor: ${(err as Error).message}\n`);
    process.exit(2);
  };
  if (argv[0] === '--check') {
    checkSupervisor().then((report) => {
      process.stdout.write(`${JSON.stringify(report)}\n`);
      process.exit(0);
    }, fail);
  } else {
    const started = argv[0] === '--warm' ? runWarm() : runSupervisor(argv, process.env);
    started.then((supervisor) => {
      if (!supervisor) process.exit(0);
    }, fail);
  }
}

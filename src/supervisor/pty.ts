import { constants } from 'node:os';
import pty from 'node-pty';

export interface PtySpawnOptions {
  cwd: string;
  env: Record<string, string>;
  cols?: number;
  rows?: number;
  uid?: number;
  gid?: number;
}

/** A process on a pseudo-terminal: one output stream (stdout and stderr merged). */
export interface PtyProcess {
  readonly pid: number;
  onData(cb: (data: Buffer) => void): void;
  /** After the terminal is drained: exit code, or the name of the terminating signal. */
  onExit(cb: (exitCode: number | null, signal: string | null) => void): void;
  write(data: Buffer | string): void;
  resize(cols: number, rows: number): void;
  pause(): void;
  resume(): void;
}

/** Signal number → name (`15` → `SIGTERM`). */
export function signalName(signo: number): string | null {
  for (const [name, n] of Object.entries(constants.signals)) if (n === signo) return name;
  return null;
}

/**
 * Starts `file args` on a new pty (node-pty forks with setsid, so the pid is
 * also the process group id). Data is raw bytes (`encoding: null`).
 */
export function spawnPty(file: string, args: string[], opts: PtySpawnOptions): PtyProcess {
  const term = pty.spawn(file, args, {
    name: opts.env.TERM ?? 'xterm-256color',
    cols: opts.cols ?? 80,
    rows: opts.rows ?? 24,
    cwd: opts.cwd,
    env: opts.env,
    encoding: null,
    ...(opts.uid !== undefined ? { uid: opts.uid, gid: opts.gid } : {}),
  });
  return {
    pid: term.pid,
    onData(cb) {
      // With encoding null node-pty hands out Buffers, though its typings say string.
      term.onData((d: string | Buffer) => cb(typeof d === 'string' ? Buffer.from(d) : d));
    },
    onExit(cb) {
      term.onExit(({ exitCode, signal }) => {
        if (signal) cb(null, signalName(signal) ?? `SIG${signal}`);
        else cb(exitCode, null);
      });
    },
    write(data) {
      term.write(data);
    },
    resize(cols, rows) {
      try {
        term.resize(Math.max(1, Math.floor(cols)), Math.max(1, Math.floor(rows)));
      } catch {
        // the pty is already closed
      }
    },
    pause: () => term.pause(),
    resume: () => term.resume(),
  };
}

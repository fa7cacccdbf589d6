import type { ChildProcess } from 'node:child_process';

/**
 * Resolves with the URL a `openshell gateway start` child prints once it
 * listens; rejects (with its stderr) if it exits first or takes too long.
 */
export function listeningUrl(child: ChildProcess, timeoutMs: number): Promise<string> {
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
    if (stderr.length > 20_000) stderr = stderr.slice(-10_000);
  });
  return new Promise<string>((resolve, reject) => {
    let out = '';
    const onData = (d: Buffer) => {
      out += d.toString();
      const m = /openshell gateway listening on (\S+)/.exec(out);
      if (m) {
        done();
        child.stdout?.resume();
        resolve(m[1]);
      }
    };
    const onExit = (code: number | null) => {
      done();
      reject(new Error(`gateway exited with ${code}: ${stderr}`));
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`gateway did not start in ${timeoutMs / 1000} s: ${stderr}`));
    }, timeoutMs);
    const done = () => {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.off('exit', onExit);
    };
    child.stdout?.on('data', onData);
    child.once('exit', onExit);
  });
}

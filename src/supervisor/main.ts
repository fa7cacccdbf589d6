/**
 * The in-sandbox supervisor (`openshell supervisor [-- command…]`). Started
 * by a compute driver with OPENSHELL_SANDBOX_ID, OPENSHELL_SANDBOX_TOKEN and
 * OPENSHELL_ENDPOINT. Start-up imports stay lean: this process is on the
 * create → Ready path; the exec engine, sshd and egress proxy load after the
 * control session is dialed.
 */
import { pathToFileURL } from 'node:url';
import { Supervisor, supervisorOptionsFromEnv } from './supervisor.js';

export async function runSupervisor(argv: string[], env: NodeJS.ProcessEnv): Promise<Supervisor> {
  const dash = argv.indexOf('--');
  const command = dash >= 0 ? argv.slice(dash + 1) : argv;
  const supervisor = new Supervisor(supervisorOptionsFromEnv(env, command));
  void supervisor.start();
  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    const force = setTimeout(() => process.exit(1), 5000).unref();
    supervisor.close(`signal ${signal}`).then(
      () => {
        clearTimeout(force);
        process.exit(0);
      },
      () => process.exit(1),
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  return supervisor;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  runSupervisor(process.argv.slice(2), process.env).catch((err: unknown) => {
    process.stderr.write(`openshell supervisor: ${(err as Error).message}\n`);
    process.exit(2);
  });
}

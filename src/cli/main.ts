/**
 * The `openshell` command. `runCli` runs one invocation against the given io
 * and resolves with its exit code; the entry point (bin/openshell.js) exits
 * with it. Gateway and supervisor modules load lazily: `sandbox list` must
 * not pay for Fastify.
 */
import { readFileSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError, Option } from 'commander';
import { OpenShellApiError, OpenShellConnectionError, SandboxWaitError } from '../client/index.js';
import { CONFIG_OPTIONS } from '../config.js';
import { packageRoot } from '../paths.js';
import { CliExit, DEFAULT_GATEWAY, emptyStdin, UsageError, type CliIo } from './context.js';
import { registerExecCommand } from './exec.js';
import { registerExecsCommands } from './execs.js';
import { registerFileCommands } from './files.js';
import { registerLogsCommand, registerPolicyCommands } from './policy.js';
import { registerSandboxCommands } from './sandbox.js';
import { registerSshCommands, registerSshProxyCommand } from './ssh.js';

export type { CliIo } from './context.js';

/** Exit codes: 0 ok, 1 an operation failed, 2 a usage error; `sandbox exec` passes the command's through. */
export async function runCli(argv: string[], io: Partial<CliIo> = {}): Promise<number> {
  const full: CliIo = {
    stdout: io.stdout ?? process.stdout,
    stderr: io.stderr ?? process.stderr,
    stdin: io.stdin ?? (io.stdout || io.stderr ? emptyStdin() : process.stdin),
    env: io.env ?? process.env,
  };
  const program = buildProgram(full);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (err) {
    return report(err, full);
  }
}

function buildProgram(io: CliIo): Command {
  const program = new Command('openshell');
  program
    .description('Sandboxes for AI agents: gateway, supervisor and client')
    .version(version(), '-V, --version', 'print the version')
    .option('--gateway <url>', `gateway URL (env OPENSHELL_GATEWAY, default ${DEFAULT_GATEWAY})`)
    .addOption(new Option('-o, --output <format>', 'output format of read commands').choices(['table', 'json']).default('table'))
    .exitOverride()
    .showSuggestionAfterError(true)
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
    })
    .addHelpText('after', '\nThe bearer token for the gateway is read from OPENSHELL_AUTH_TOKEN.');

  const gateway = program.command('gateway').description('run the gateway');
  gateway
    .command('start')
    .description('start the gateway (flags below, each with an env var)')
    .helpOption(false)
    .allowUnknownOption()
    .allowExcessArguments()
    .argument('[flags...]')
    .action(async (_flags: string[], _opts: unknown, cmd: Command) => {
      const flags = cmd.args;
      if (flags.includes('--help') || flags.includes('-h')) {
        io.stdout.write(gatewayHelp());
        return;
      }
      const { startGateway } = await import('../server.js');
      await startGateway(flags, io.env);
      await new Promise<never>(() => undefined); // runs until a signal; server.ts exits the process
    });

  program
    .command('supervisor')
    .description('run the in-sandbox supervisor (started by compute drivers)')
    .helpOption(false)
    .allowUnknownOption()
    .allowExcessArguments()
    .argument('[command...]')
    .action(async (_command: string[], _opts: unknown, cmd: Command) => {
      const { runSupervisor } = await import('../supervisor/main.js');
      await runSupervisor(['--', ...cmd.args.filter((a, i) => !(i === 0 && a === '--'))], io.env);
      await new Promise<never>(() => undefined); // runs until a signal; the supervisor exits the process
    });

  const sandbox = program.command('sandbox').alias('sb').description('create, inspect, use and delete sandboxes');
  registerSandboxCommands(sandbox, io);
  registerExecCommand(sandbox, io);
  registerExecsCommands(sandbox, io);
  registerSshCommands(sandbox, io);
  registerFileCommands(sandbox, io);
  registerLogsCommand(sandbox, io);
  registerPolicyCommands(program, io);
  registerSshProxyCommand(program, io);
  return program;
}

/** Exit code when stdout's reader is gone: 128 + SIGPIPE, as a shell reports a writer killed by SIGPIPE. */
export const EPIPE_EXIT = 141;

/** Prints what went wrong and picks the exit code. */
function report(err: unknown, io: CliIo): number {
  if (err instanceof CommanderError) {
    // Help and version "errors" are successes; commander already printed its message.
    if (err.exitCode === 0 || err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return 0;
    return 2;
  }
  if (err instanceof CliExit) {
    if (err.message) io.stderr.write(`${err.message}\n`);
    return err.exitCode;
  }
  if (err instanceof UsageError) {
    io.stderr.write(`openshell: ${err.message}\n`);
    return 2;
  }
  if (err instanceof OpenShellApiError) {
    io.stderr.write(`openshell: ${err.message} (${err.code})\n`);
    return 1;
  }
  if (err instanceof OpenShellConnectionError || err instanceof SandboxWaitError) {
    io.stderr.write(`openshell: ${err.message}\n`);
    return 1;
  }
  const e = err as NodeJS.ErrnoException;
  // Our output's reader went away (`openshell … | head`): exit quietly, as a
  // process killed by SIGPIPE would (128 + 13).
  if (e?.code === 'EPIPE') return EPIPE_EXIT;
  io.stderr.write(`openshell: ${e?.message ?? String(err)}\n`);
  return 1;
}

function gatewayHelp(): string {
  const rows = CONFIG_OPTIONS.map((o) => [`--${o.flag} <value>`, o.env]);
  const width = Math.max(...rows.map(([f]) => f.length)) + 2;
  return [
    'Usage: openshell gateway start [flags]',
    '',
    'Starts the gateway. Every flag can also be set by its environment variable;',
    'flags win. Prints "openshell gateway listening on <url>" when ready.',
    '',
    'Flags (environment variable):',
    ...rows.map(([f, env]) => `  ${f.padEnd(width)}${env}`),
    '',
  ].join('\n');
}

function version(): string {
  try {
    return (JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return '0.0.0';
  }
}

/** Run when executed directly or through bin/openshell.js (possibly via an npm bin symlink). */
function isEntryPoint(): boolean {
  if (!process.argv[1]) return false;
  try {
    const entry = realpathSync(process.argv[1]);
    return entry === fileURLToPath(import.meta.url) || entry === realpathSync(join(packageRoot(), 'bin', 'openshell.js'));
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  const code = await runCli(process.argv.slice(2));
  // Exit once stdout and stderr are flushed (they are asynchronous when piped).
  let pending = 2;
  const done = () => {
    if (--pending === 0) process.exit(code);
  };
  process.stdout.write('', done);
  process.stderr.write('', done);
}

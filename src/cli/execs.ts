import { Option, type Command } from 'commander';
import { DEFAULT_RESUME_TIMEOUT_MS, type ExecInfo } from '../client/index.js';
import { contextOf, CliExit, parseSeconds, UsageError, type CliIo } from './context.js';
import { printExec } from './exec.js';
import { age, printJson, renderTable, shellQuote } from './output.js';

/** `openshell sandbox execs NAME`, `sandbox attach NAME EXEC_ID`, `sandbox kill NAME EXEC_ID [SIGNAL]`. */
export function registerExecsCommands(sandbox: Command, io: CliIo): void {
  sandbox
    .command('execs')
    .description('list the execs of a sandbox (running, and finished within the last hour)')
    .argument('<name>')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const ctx = contextOf(io, cmd);
      const list = await ctx.client.execsList(name);
      if (ctx.output === 'json') printJson(io.stdout, list);
      else io.stdout.write(execsTable(list.execs));
    });

  sandbox
    .command('attach')
    .description('replay an exec’s output from the start and follow it; exits with its exit code')
    .argument('<name>')
    .argument('<execId>')
    .addOption(
      new Option('--resume-timeout <seconds>', 'how long to keep re-attaching while the gateway is unreachable (0: never)')
        .default(DEFAULT_RESUME_TIMEOUT_MS / 1000)
        .argParser(parseSeconds('--resume-timeout', true)),
    )
    .action(async (name: string, execId: string, opts: { resumeTimeout: number }, cmd: Command) => {
      const ctx = contextOf(io, cmd);
      const code = await printExec(ctx, ctx.client.attach(name, execId, { resume: { timeoutMs: Math.round(opts.resumeTimeout * 1000) } }));
      if (code !== 0) throw new CliExit(code);
    });

  sandbox
    .command('kill')
    .description('send a signal (default TERM) to an exec’s process group')
    .argument('<name>')
    .argument('<execId>')
    .argument('[signal]', 'e.g. TERM, KILL, INT, HUP, 9', 'TERM')
    .action(async (name: string, execId: string, signal: string, _opts: unknown, cmd: Command) => {
      const ctx = contextOf(io, cmd);
      const sig = signal.toUpperCase();
      if (!/^(SIG)?[A-Z0-9+-]{1,16}$|^[0-9]{1,2}$/.test(sig)) throw new UsageError(`signal: expected a name such as TERM or a number, got "${signal}"`);
      const result = await ctx.client.execSignal(name, execId, /^\d+$/.test(sig) || sig.startsWith('SIG') ? sig : `SIG${sig}`);
      if (ctx.output === 'json') printJson(io.stdout, result);
    });
}

/** The `sandbox execs` table: id, state, exit code, age, command. */
export function execsTable(execs: ExecInfo[]): string {
  if (execs.length === 0) return 'No execs.\n';
  const exit = (e: ExecInfo): string => {
    if (e.state !== 'exited') return '-';
    if (e.timedOut) return '124 (timeout)';
    if (typeof e.exitCode === 'number') return String(e.exitCode);
    return typeof e.signal === 'string' ? e.signal : '?';
  };
  return renderTable(
    ['EXEC ID', 'STATE', 'EXIT', 'AGE', 'COMMAND'],
    execs.map((e) => [
      e.execId,
      e.state ?? '?',
      exit(e),
      typeof e.startedAt === 'string' ? age(e.startedAt) : '?',
      (e.command ?? []).map(shellQuote).join(' ').slice(0, 80),
    ]),
  );
}

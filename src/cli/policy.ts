import type { Command } from 'commander';
import { stringify as toYaml } from 'yaml';
import type { LogLine } from '../client/index.js';
import { contextOf, UsageError, writeAll, type CliIo } from './context.js';
import { printJson } from './output.js';
import { readPolicyFile } from './sandbox.js';

/** `openshell policy get|set`. */
export function registerPolicyCommands(program: Command, io: CliIo): void {
  const policy = program.command('policy').description("read or replace a sandbox's network policy");

  policy
    .command('get')
    .description('print the network policy (YAML; --output json for the API object)')
    .argument('<name>')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const ctx = contextOf(io, cmd);
      const state = await ctx.client.getPolicy(name);
      if (ctx.output === 'json') printJson(io.stdout, state);
      else if (state.policy === null || state.policy === undefined) io.stdout.write(`# version ${state.version}: no policy, all egress is denied\n`);
      else io.stdout.write(`# version ${state.version}\n${toYaml(state.policy)}`);
    });

  policy
    .command('set')
    .description('replace the network policy from a YAML or JSON file (- or none: stdin); applied live')
    .argument('<name>')
    .argument('[file]', 'YAML or JSON policy; - or omitted: read from stdin')
    .action(async (name: string, file: string | undefined, _opts: unknown, cmd: Command) => {
      const ctx = contextOf(io, cmd);
      // Waiting on a terminal for a policy nobody is typing would look like a hang.
      if ((file === undefined || file === '-') && (io.stdin as { isTTY?: boolean }).isTTY) {
        throw new UsageError('policy set: give a policy file, or pipe one in (openshell policy set NAME < policy.yaml)');
      }
      const result = await ctx.client.setPolicy(name, await readPolicyFile(file ?? '-', io));
      if (ctx.output === 'json') printJson(io.stdout, result);
      else {
        const how = result.applied ? 'applied live' : 'stored; the supervisor applies it when it reconnects';
        io.stdout.write(`policy of sandbox "${name}" updated to version ${result.version} (${how})\n`);
      }
    });
}

/** `openshell sandbox logs NAME [-f]`. */
export function registerLogsCommand(sandbox: Command, io: CliIo): void {
  sandbox
    .command('logs')
    .description('print supervisor and egress-decision log lines')
    .argument('<name>')
    .option('-f, --follow', 'keep streaming new lines')
    .option('--tail <lines>', 'only the last N lines', (v: string) => {
      if (!/^\d{1,6}$/.test(v)) throw new UsageError(`--tail: expected a number of lines, got "${v}"`);
      return Number(v);
    })
    .action(async (name: string, opts: { follow?: boolean; tail?: number }, cmd: Command) => {
      const ctx = contextOf(io, cmd);
      for await (const line of ctx.client.logs(name, { follow: opts.follow, tail: opts.tail })) {
        await writeAll(io.stdout, ctx.output === 'json' ? `${JSON.stringify(line)}\n` : formatLogLine(line));
      }
    });
}

/** `2026-01-01T00:00:00.000Z INFO  egress  allow api.github.com:443 policy=github`. */
export function formatLogLine(line: LogLine): string {
  const fields = Object.entries(line.fields ?? {})
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join(' ');
  return `${line.time} ${line.level.toUpperCase().padEnd(5)} ${line.source.padEnd(10)} ${line.message}${fields ? ` ${fields}` : ''}\n`;
}

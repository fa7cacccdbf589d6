import type { Command } from 'commander';
import { stringify as toYaml } from 'yaml';
import { contextOf, type CliIo } from './context.js';
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
      const value = await ctx.client.getPolicy(name);
      if (ctx.output === 'json') printJson(io.stdout, value);
      else io.stdout.write(value === null ? '# no policy: all egress is denied\n' : toYaml(value));
    });

  policy
    .command('set')
    .description('replace the network policy from a YAML or JSON file (- = stdin); applied live')
    .argument('<name>')
    .argument('<file>')
    .action(async (name: string, file: string, _opts: unknown, cmd: Command) => {
      const ctx = contextOf(io, cmd);
      const result = await ctx.client.setPolicy(name, await readPolicyFile(file, io));
      if (ctx.output === 'json') printJson(io.stdout, result);
      else io.stdout.write(`policy of sandbox "${name}" updated\n`);
    });
}

/** `openshell sandbox logs NAME [-f]`. */
export function registerLogsCommand(sandbox: Command, io: CliIo): void {
  sandbox
    .command('logs')
    .description('print supervisor and egress-decision log lines')
    .argument('<name>')
    .option('-f, --follow', 'keep streaming new lines')
    .action(async (name: string, opts: { follow?: boolean }, cmd: Command) => {
      const ctx = contextOf(io, cmd);
      for await (const line of ctx.client.logs(name, { follow: opts.follow })) io.stdout.write(`${line}\n`);
    });
}

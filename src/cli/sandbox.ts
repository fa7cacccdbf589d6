import { readFile } from 'node:fs/promises';
import { Command, Option } from 'commander';
import { parse as parseYaml } from 'yaml';
import { OpenShellApiError, SandboxWaitError, describeCondition } from '../client/index.js';
import type { CreateSandboxBody, Sandbox } from '../schemas/sandbox.js';
import { CliExit, collectKeyValue, contextOf, parseSeconds, UsageError, type CliIo, type Context } from './context.js';
import { printJson, sandboxDetail, sandboxTable } from './output.js';
import { Spinner } from './spinner.js';

interface CreateOptions {
  name?: string;
  image?: string;
  label?: Record<string, string>;
  env?: Record<string, string>;
  policy?: string;
  ttl?: number;
  wait: boolean;
  timeout: number;
}

/** `openshell sandbox create|list|get|delete`. */
export function registerSandboxCommands(sandbox: Command, io: CliIo): void {
  sandbox
    .command('create')
    .description('create a sandbox and wait until it is Ready')
    .option('--name <name>', 'sandbox name (DNS-1123 label); generated when absent')
    .option('--image <image>', 'container image (docker/kubernetes drivers)')
    .option('--label <key=value>', 'label, repeatable', collectKeyValue('--label'))
    .option('--env <KEY=VALUE>', 'environment variable, repeatable', collectKeyValue('--env'))
    .option('--policy <file>', 'network policy file (YAML or JSON)')
    .option('--ttl <seconds>', 'delete the sandbox after this many seconds', parseSeconds('--ttl'))
    .option('--no-wait', 'return at once, without waiting for Ready')
    .addOption(new Option('--timeout <seconds>', 'how long to wait for Ready').default(60).argParser(parseSeconds('--timeout')))
    .argument('[command...]', 'entrypoint command, after --')
    .action(async (command: string[], opts: CreateOptions, cmd: Command) => {
      const ctx = contextOf(io, cmd);
      const body: CreateSandboxBody = {};
      if (opts.name !== undefined) body.name = opts.name;
      if (opts.image !== undefined) body.image = opts.image;
      if (opts.label) body.labels = opts.label;
      if (opts.env) body.env = opts.env;
      if (opts.ttl !== undefined) body.ttlSeconds = Math.ceil(opts.ttl);
      if (command.length > 0) body.command = command;
      if (opts.policy !== undefined) body.policy = await readPolicyFile(opts.policy, io);
      let sandbox = await ctx.client.createSandbox(body);
      if (opts.wait) sandbox = await waitReady(ctx, sandbox, opts.timeout);
      printSandbox(ctx, sandbox);
    });

  sandbox
    .command('list')
    .alias('ls')
    .description('list sandboxes')
    .option('--label <key=value>', 'only sandboxes with this label, repeatable', collectKeyValue('--label'))
    .action(async (opts: { label?: Record<string, string> }, cmd: Command) => {
      const ctx = contextOf(io, cmd);
      const list = await ctx.client.listSandboxes({ labels: opts.label });
      if (ctx.output === 'json') printJson(io.stdout, list);
      else io.stdout.write(sandboxTable(list.sandboxes));
    });

  sandbox
    .command('get')
    .description('show one sandbox')
    .argument('<name>')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      const ctx = contextOf(io, cmd);
      printSandbox(ctx, await ctx.client.getSandbox(name));
    });

  sandbox
    .command('delete')
    .alias('rm')
    .description('delete sandboxes')
    .argument('<names...>')
    .option('--wait', 'wait until each sandbox is gone')
    .addOption(new Option('--timeout <seconds>', 'how long --wait waits').default(60).argParser(parseSeconds('--timeout')))
    .action(async (names: string[], opts: { wait?: boolean; timeout: number }, cmd: Command) => {
      const ctx = contextOf(io, cmd);
      const deleted: string[] = [];
      let failures = 0;
      for (const name of names) {
        try {
          const s = await ctx.client.deleteSandbox(name);
          deleted.push(name);
          if (ctx.output === 'json') io.stdout.write(`${JSON.stringify(s)}\n`);
          else if (!opts.wait) io.stdout.write(`sandbox "${name}" deleting\n`);
        } catch (err) {
          if (!(err instanceof OpenShellApiError)) throw err;
          failures++;
          io.stderr.write(`openshell: ${err.message} (${err.code})\n`);
        }
      }
      if (opts.wait) {
        const results = await Promise.allSettled(deleted.map((name) => waitGone(ctx, name, opts.timeout)));
        results.forEach((r, i) => {
          if (r.status === 'fulfilled') {
            if (ctx.output !== 'json') io.stdout.write(`sandbox "${deleted[i]}" deleted\n`);
          } else {
            failures++;
            io.stderr.write(`openshell: ${(r.reason as Error).message}\n`);
          }
        });
      }
      if (failures > 0) throw new CliExit(1);
    });
}

function printSandbox(ctx: Context, sandbox: Sandbox): void {
  if (ctx.output === 'json') printJson(ctx.io.stdout, sandbox);
  else ctx.io.stdout.write(sandboxDetail(sandbox));
}

/** Waits for Ready with a spinner; on failure says what happened and that the sandbox is still there. */
async function waitReady(ctx: Context, created: Sandbox, timeoutSeconds: number): Promise<Sandbox> {
  const spinner = new Spinner(ctx.io.stderr);
  const status = (s: Sandbox) => `sandbox "${s.name}": ${s.phase}${describeCondition(s)}`;
  spinner.start(status(created));
  try {
    const ready = await ctx.client.waitForReady(created.name, {
      timeoutMs: Math.round(timeoutSeconds * 1000),
      onUpdate: (s) => s.phase !== 'Ready' && spinner.update(status(s)),
    });
    spinner.stop(`sandbox "${created.name}" is Ready`);
    return ready;
  } catch (err) {
    spinner.stop();
    if (err instanceof SandboxWaitError) {
      const hint = err.phase === 'Deleting' || err.message.includes('deleted') ? '' : `; delete it with: openshell sandbox delete ${created.name}`;
      throw new CliExit(1, `openshell: ${err.message}${hint}`);
    }
    throw err;
  }
}

/** Resolves when the sandbox's watch ends (it is gone) or it is already gone. */
async function waitGone(ctx: Context, name: string, timeoutSeconds: number): Promise<void> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), Math.round(timeoutSeconds * 1000));
  let last: Sandbox | undefined;
  try {
    for await (const s of ctx.client.watchSandbox(name, { signal: abort.signal })) last = s;
  } catch (err) {
    if (err instanceof OpenShellApiError && err.code === 'SANDBOX_NOT_FOUND') return;
    if (abort.signal.aborted) {
      throw new Error(`sandbox "${name}" still present after ${timeoutSeconds}s${last ? ` (phase ${last.phase}${describeCondition(last)})` : ''}`);
    }
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/** Reads a policy file (YAML or JSON; `-` = stdin) into an object. */
export async function readPolicyFile(path: string, io: CliIo): Promise<unknown> {
  let text: string;
  try {
    text = path === '-' ? await readStream(io.stdin) : await readFile(path, 'utf8');
  } catch (err) {
    throw new UsageError(`--policy: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    const value = parseYaml(text) as unknown;
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      throw new Error('expected a mapping (an object) at the top level');
    }
    return value;
  } catch (err) {
    throw new UsageError(`policy file ${path}: ${(err as Error).message}`);
  }
}

async function readStream(stream: AsyncIterable<Buffer | string>): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
  return Buffer.concat(chunks).toString('utf8');
}

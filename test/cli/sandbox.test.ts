import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { packageRoot } from '../../src/paths.js';
import type { Sandbox, SandboxList } from '../../src/schemas/sandbox.js';
import { startGateway } from '../helpers/gateway.js';
import { cli, closedPort } from './helpers.js';

t.setTimeout(120_000);

t.test('create (waits for Ready) / list / get / delete round trip', async (t) => {
  const gw = await startGateway(t);
  const env = { OPENSHELL_GATEWAY: gw.url };

  const created = await cli(['sandbox', 'create', '--name', 'cli-one', '--label', 'team=a', '--label', 'tier=x', '--timeout', '30', '--', 'sleep', '300'], { env });
  t.equal(created.code, 0, created.stderr);
  t.match(created.stdout, /^Name:\s+cli-one$/m);
  t.match(created.stdout, /^Phase:\s+Ready$/m);
  t.match(created.stdout, /^Labels:\s+team=a,tier=x$/m);
  t.match(created.stderr, /sandbox "cli-one" is Ready/, 'progress on stderr (plain lines, not a TTY)');

  const json = await cli(['sandbox', 'create', '--name', 'cli-two', '--label', 'team=b', '--output', 'json'], { env });
  t.equal(json.code, 0, json.stderr);
  const two = JSON.parse(json.stdout) as Sandbox;
  t.equal(two.name, 'cli-two');
  t.equal(two.phase, 'Ready');
  t.same(two.labels, { team: 'b' });

  const get = await cli(['--output', 'json', 'sandbox', 'get', 'cli-one'], { env });
  t.equal(get.code, 0, get.stderr);
  const one = JSON.parse(get.stdout) as Sandbox;
  t.equal(one.name, 'cli-one');
  t.equal(one.phase, 'Ready');
  t.same(one.labels, { team: 'a', tier: 'x' });
  t.same(one.command, ['sleep', '300']);

  const list = await cli(['sandbox', 'list', '--output', 'json'], { env });
  t.equal(list.code, 0, list.stderr);
  const all = JSON.parse(list.stdout) as SandboxList;
  t.same(Object.keys(all), ['sandboxes'], 'exactly the API object');
  t.same(all.sandboxes.map((s) => s.name).sort(), ['cli-one', 'cli-two']);

  const filtered = await cli(['sandbox', 'list', '--label', 'team=a', '-o', 'json'], { env });
  t.same((JSON.parse(filtered.stdout) as SandboxList).sandboxes.map((s) => s.name), ['cli-one']);
  const none = await cli(['sandbox', 'list', '--label', 'team=zzz', '-o', 'json'], { env });
  t.same(JSON.parse(none.stdout), { sandboxes: [] });

  const table = await cli(['sandbox', 'list', '--gateway', gw.url], {});
  t.equal(table.code, 0, table.stderr);
  t.match(table.stdout, /^NAME\s+PHASE\s+REASON\s+DRIVER\s+IMAGE\s+AGE\s+LABELS$/m);
  t.match(table.stdout, /^cli-one\s+Ready\s+SupervisorConnected\s+process\s+-\s+\d+s\s+team=a,tier=x$/m);

  const del = await cli(['sandbox', 'delete', '--wait', 'cli-one', 'cli-two'], { env });
  t.equal(del.code, 0, del.stderr);
  t.match(del.stdout, /sandbox "cli-one" deleted/);
  t.match(del.stdout, /sandbox "cli-two" deleted/);
  const after = await cli(['sandbox', 'list', '-o', 'json'], { env });
  t.same(JSON.parse(after.stdout), { sandboxes: [] }, 'gone once --wait returns');
  const empty = await cli(['sandbox', 'list'], { env });
  t.equal(empty.stdout, 'No sandboxes.\n');
});

t.test('create --no-wait answers at once; delete of several continues past a missing one', async (t) => {
  const gw = await startGateway(t);
  const env = { OPENSHELL_GATEWAY: gw.url };
  const res = await cli(['sandbox', 'create', '--no-wait', '--name', 'quick', '-o', 'json'], { env });
  t.equal(res.code, 0, res.stderr);
  t.equal((JSON.parse(res.stdout) as Sandbox).name, 'quick');
  t.equal(res.stderr, '', 'no progress when not waiting');
  const del = await cli(['sandbox', 'delete', 'missing', 'quick'], { env });
  t.equal(del.code, 1);
  t.match(del.stderr, 'openshell: sandbox "missing" not found (SANDBOX_NOT_FOUND)');
  t.match(del.stdout, 'sandbox "quick" deleting');
});

t.test('server errors: unknown sandbox, bad name, name taken', async (t) => {
  const gw = await startGateway(t);
  const env = { OPENSHELL_GATEWAY: gw.url };

  const missing = await cli(['sandbox', 'get', 'nope'], { env });
  t.equal(missing.code, 1);
  t.equal(missing.stdout, '');
  t.equal(missing.stderr, 'openshell: sandbox "nope" not found (SANDBOX_NOT_FOUND)\n');

  const bad = await cli(['sandbox', 'create', '--name', 'Bad_Name'], { env });
  t.equal(bad.code, 1);
  t.match(bad.stderr, /^openshell: body\.name: .*\(INVALID_ARGUMENT\)\n$/);

  const ok = await cli(['sandbox', 'create', '--name', 'taken', '--no-wait'], { env });
  t.equal(ok.code, 0, ok.stderr);
  const dup = await cli(['sandbox', 'create', '--name', 'taken', '--no-wait'], { env });
  t.equal(dup.code, 1);
  t.match(dup.stderr, /\(ALREADY_EXISTS\)/);
});

t.test('a token from OPENSHELL_AUTH_TOKEN reaches the gateway', async (t) => {
  const gw = await startGateway(t, { authToken: 'cli-token' });
  const denied = await cli(['sandbox', 'list'], { env: { OPENSHELL_GATEWAY: gw.url } });
  t.equal(denied.code, 1);
  t.match(denied.stderr, /\(UNAUTHENTICATED\)/);
  const allowed = await cli(['sandbox', 'list', '-o', 'json'], { env: { OPENSHELL_GATEWAY: gw.url, OPENSHELL_AUTH_TOKEN: 'cli-token' } });
  t.equal(allowed.code, 0, allowed.stderr);
  t.same(JSON.parse(allowed.stdout), { sandboxes: [] });
});

t.test('unreachable gateway: a clear message and exit 1', async (t) => {
  const port = await closedPort();
  const res = await cli(['sandbox', 'list', '--gateway', `http://127.0.0.1:${port}`]);
  t.equal(res.code, 1);
  t.equal(res.stderr, `openshell: cannot reach the gateway at http://127.0.0.1:${port}: ECONNREFUSED\n`);
  const fromEnv = await cli(['sandbox', 'get', 'x'], { env: { OPENSHELL_GATEWAY: `http://127.0.0.1:${port}` } });
  t.equal(fromEnv.code, 1);
  t.match(fromEnv.stderr, `cannot reach the gateway at http://127.0.0.1:${port}`);
});

t.test('usage errors exit 2; help and version exit 0', async (t) => {
  const unknown = await cli(['sandbox', 'frobnicate']);
  t.equal(unknown.code, 2);
  t.match(unknown.stderr, /unknown command 'frobnicate'/);
  const badLabel = await cli(['sandbox', 'list', '--label', 'novalue']);
  t.equal(badLabel.code, 2);
  t.match(badLabel.stderr, 'openshell: --label: expected KEY=VALUE, got "novalue"');
  const badOutput = await cli(['sandbox', 'list', '--output', 'yaml']);
  t.equal(badOutput.code, 2);
  const missingArg = await cli(['sandbox', 'get']);
  t.equal(missingArg.code, 2);
  const badUrl = await cli(['sandbox', 'list', '--gateway', 'not a url']);
  t.equal(badUrl.code, 2);
  t.match(badUrl.stderr, /invalid gateway URL/);

  const help = await cli(['--help']);
  t.equal(help.code, 0);
  t.match(help.stdout, /Usage: openshell/);
  const version = await cli(['--version']);
  t.equal(version.code, 0);
  t.match(version.stdout, /^\d+\.\d+\.\d+/);
  const gwHelp = await cli(['gateway', 'start', '--help']);
  t.equal(gwHelp.code, 0);
  for (const s of ['--port', 'OPENSHELL_PORT', '--auth-token', 'OPENSHELL_AUTH_TOKEN', '--exec-resume-window-ms']) t.match(gwHelp.stdout, s);
});

t.test('sandbox ssh-config prints a Host block with an absolute ProxyCommand', async (t) => {
  const gw = await startGateway(t);
  await cli(['sandbox', 'create', '--name', 'sshy', '--no-wait'], { env: { OPENSHELL_GATEWAY: gw.url } });
  const res = await cli(['sandbox', 'ssh-config', 'sshy', '--gateway', gw.url]);
  t.equal(res.code, 0, res.stderr);
  const lines = res.stdout.trim().split('\n').map((l) => l.trim());
  t.equal(lines[0], 'Host sshy');
  t.ok(lines.includes('User sandbox'));
  t.ok(lines.includes(`ProxyCommand ${process.execPath} ${join(packageRoot(), 'bin', 'openshell.js')} --gateway ${gw.url} ssh-proxy %h`));
  for (const l of ['StrictHostKeyChecking no', 'UserKnownHostsFile /dev/null', 'ServerAliveInterval 15', 'ServerAliveCountMax 3', 'LogLevel ERROR']) {
    t.ok(lines.includes(l), l);
  }
  const missing = await cli(['sandbox', 'ssh-config', 'nope', '--gateway', gw.url]);
  t.equal(missing.code, 1);
});

t.test('the real binary: node bin/openshell.js sandbox list --output json', async (t) => {
  const gw = await startGateway(t);
  await cli(['sandbox', 'create', '--name', 'bin-one', '--no-wait'], { env: { OPENSHELL_GATEWAY: gw.url } });
  const bin = join(packageRoot(), 'bin', 'openshell.js');
  const { stdout } = await promisify(execFile)(process.execPath, [bin, 'sandbox', 'list', '--gateway', gw.url, '--output', 'json'], {
    timeout: 30_000,
    env: { ...process.env, OPENSHELL_GATEWAY: '' },
  });
  const list = JSON.parse(stdout) as SandboxList;
  t.same(list.sandboxes.map((s) => s.name), ['bin-one']);

  const failed = await promisify(execFile)(process.execPath, [bin, 'sandbox', 'get', 'nope', '--gateway', gw.url], { timeout: 30_000 }).then(
    () => undefined,
    (e: unknown) => e as { code: number; stderr: string },
  );
  t.equal(failed?.code, 1);
  t.equal(failed?.stderr, 'openshell: sandbox "nope" not found (SANDBOX_NOT_FOUND)\n');
});

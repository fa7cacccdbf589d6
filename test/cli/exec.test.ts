import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { createServer } from 'node:http';
import t from 'tap';
import { startGateway } from '../helpers/gateway.js';
import { cli } from './helpers.js';

t.setTimeout(120_000);

t.test('sandbox exec: output streams, exit codes, stdin, env, timeout, signals', async (t) => {
  const gw = await startGateway(t);
  const env = { OPENSHELL_GATEWAY: gw.url };
  const created = await cli(['sandbox', 'create', '--name', 'ex', '--timeout', '30'], { env });
  t.equal(created.code, 0, created.stderr);

  const mixed = await cli(['sandbox', 'exec', 'ex', '--', 'sh', '-c', 'echo out; echo err >&2; exit 7'], { env });
  t.equal(mixed.code, 7, 'the command’s exit code');
  t.equal(mixed.stdout, 'out\n');
  t.equal(mixed.stderr, 'err\n');

  const ok = await cli(['sandbox', 'exec', 'ex', '--', 'true'], { env });
  t.equal(ok.code, 0);

  const binary = await cli(['sandbox', 'exec', 'ex', '--', 'sh', '-c', 'printf "\\001\\377\\000x"'], { env });
  t.equal(binary.stdout, Buffer.from([1, 0xff, 0, 0x78]).toString('utf8'));

  const stdin = await cli(['sandbox', 'exec', 'ex', '--', 'cat'], { env, stdin: 'from stdin\n' });
  t.equal(stdin.code, 0, stdin.stderr);
  t.equal(stdin.stdout, 'from stdin\n');

  const withEnv = await cli(['sandbox', 'exec', 'ex', '--env', 'GREETING=hi there', '--', 'sh', '-c', 'echo "$GREETING"'], { env });
  t.equal(withEnv.stdout, 'hi there\n');

  const timedOut = await cli(['sandbox', 'exec', 'ex', '--timeout', '1', '--', 'sleep', '30'], { env });
  t.equal(timedOut.code, 124, 'timeout → 124');

  const killed = await cli(['sandbox', 'exec', 'ex', '--', 'sh', '-c', 'kill -KILL $$'], { env });
  t.equal(killed.code, 137, 'SIGKILL → 128+9');

  // The pause before exiting: node-pty gives up reading 200 ms after the child exits, so on a
  // loaded machine the last line of a process that exits at once can be lost (see the README).
  const tty = await cli(['sandbox', 'exec', 'ex', '-t', '--', 'sh', '-c', 'read x; echo "got $x"; sleep 0.5; test -t 0 && exit 5'], { env, stdin: 'abc\n' });
  t.equal(tty.code, 5, `interactive exec over the WebSocket, on a terminal (${tty.stderr})`);
  t.match(tty.stdout, /got abc\r?\n/);

  const missing = await cli(['sandbox', 'exec', 'nope', '--', 'true'], { env });
  t.equal(missing.code, 1);
  t.equal(missing.stderr, 'openshell: sandbox "nope" not found (SANDBOX_NOT_FOUND)\n');

  const noCommand = await cli(['sandbox', 'exec', 'ex'], { env });
  t.equal(noCommand.code, 2, 'a command is required');
});

t.test('sandbox exec: an error event exits 255 with its message', async (t) => {
  // A stand-in gateway whose exec stream ends with an `error` line, split across writes.
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    res.write('{"type":"started","execId":"ex_1"}\n{"type":"stdout","data":"cGFy');
    res.write('dGlhbAo=","offset":0}\n{"type":"error","code":"RELAY_LOST","message":"relay to the sandbox was lost"}\n');
    res.end();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  const { port } = server.address() as { port: number };
  const res = await cli(['sandbox', 'exec', 'any', '--gateway', `http://127.0.0.1:${port}`, '--', 'true']);
  t.equal(res.code, 255);
  t.equal(res.stdout, 'partial\n');
  t.equal(res.stderr, 'openshell: exec failed: relay to the sandbox was lost (RELAY_LOST)\n');
});

t.test('sandbox upload / download, policy set / get, logs', async (t) => {
  const { mkdirSync, readFileSync, writeFileSync, existsSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { tempDir } = await import('../helpers/gateway.js');
  const gw = await startGateway(t);
  const env = { OPENSHELL_GATEWAY: gw.url };
  t.equal((await cli(['sandbox', 'create', '--name', 'fs'], { env })).code, 0);
  const dir = tempDir(t, 'openshell-cli-files-');

  const file = join(dir, 'hello.txt');
  writeFileSync(file, 'hello file\n');
  const up = await cli(['sandbox', 'upload', 'fs', file, 'hello.txt'], { env });
  t.equal(up.code, 0, up.stderr);
  t.equal((await cli(['sandbox', 'exec', 'fs', '--', 'cat', 'hello.txt'], { env })).stdout, 'hello file\n');

  mkdirSync(join(dir, 'tree', 'sub'), { recursive: true });
  writeFileSync(join(dir, 'tree', 'top.txt'), 'top\n');
  writeFileSync(join(dir, 'tree', 'sub', 'deep.txt'), 'deep\n');
  const upDir = await cli(['sandbox', 'upload', 'fs', join(dir, 'tree'), 'tree'], { env });
  t.equal(upDir.code, 0, upDir.stderr);
  t.equal((await cli(['sandbox', 'exec', 'fs', '--', 'cat', 'tree/sub/deep.txt'], { env })).stdout, 'deep\n');

  const down = await cli(['sandbox', 'download', 'fs', 'hello.txt', join(dir, 'back.txt')], { env });
  t.equal(down.code, 0, down.stderr);
  t.equal(readFileSync(join(dir, 'back.txt'), 'utf8'), 'hello file\n');

  // A directory is detected and fetched as a tar stream.
  const downDir = await cli(['sandbox', 'download', 'fs', 'tree', join(dir, 'tree-back')], { env });
  t.equal(downDir.code, 0, downDir.stderr);
  t.equal(readFileSync(join(dir, 'tree-back', 'sub', 'deep.txt'), 'utf8'), 'deep\n');
  t.ok(existsSync(join(dir, 'tree-back', 'top.txt')));

  const toStdout = await cli(['sandbox', 'download', 'fs', 'tree/top.txt', '-'], { env });
  t.equal(toStdout.stdout, 'top\n');

  const missing = await cli(['sandbox', 'download', 'fs', 'no-such-file', join(dir, 'x')], { env });
  t.equal(missing.code, 1);
  t.match(missing.stderr, /no-such-file/);

  const policyFile = join(dir, 'policy.yaml');
  writeFileSync(policyFile, 'version: 1\nnetwork_policies:\n  gh:\n    endpoints:\n      - host: api.github.com\n        port: 443\n');
  const set = await cli(['policy', 'set', 'fs', policyFile, '-o', 'json'], { env });
  t.equal(set.code, 0, set.stderr);
  const setResult = JSON.parse(set.stdout) as { version: number };
  const got = await cli(['policy', 'get', 'fs', '--output', 'json'], { env });
  const state = JSON.parse(got.stdout) as { version: number; policy: { network_policies: Record<string, unknown> } };
  t.equal(state.version, setResult.version);
  t.same(Object.keys(state.policy.network_policies), ['gh']);
  const yaml = await cli(['policy', 'get', 'fs'], { env });
  t.match(yaml.stdout, /host: api\.github\.com/);

  const piped = await cli(['policy', 'set', 'fs', '-o', 'json'], {
    env,
    stdin: 'version: 1\nnetwork_policies:\n  piped:\n    endpoints: [{host: pypi.org, port: 443}]\n',
  });
  t.equal(piped.code, 0, `policy set without a file reads stdin: ${piped.stderr}`);
  const pipedState = JSON.parse((await cli(['policy', 'get', 'fs', '-o', 'json'], { env })).stdout) as typeof state;
  t.same(Object.keys(pipedState.policy.network_policies), ['piped']);
  t.ok(pipedState.version > state.version, 'a new version');

  const badPolicy = join(dir, 'bad.yaml');
  writeFileSync(badPolicy, 'version: [unclosed\n');
  const bad = await cli(['policy', 'set', 'fs', badPolicy], { env });
  t.equal(bad.code, 2);
  t.match(bad.stderr, 'bad.yaml');

  const withPolicy = await cli(['sandbox', 'create', '--name', 'fs-policy', '--no-wait', '--policy', policyFile], { env });
  t.equal(withPolicy.code, 0, withPolicy.stderr);
  const created = JSON.parse((await cli(['policy', 'get', 'fs-policy', '-o', 'json'], { env })).stdout) as typeof state;
  t.same(Object.keys(created.policy.network_policies), ['gh'], 'create --policy');
  const noFile = await cli(['sandbox', 'create', '--policy', join(dir, 'absent.yaml')], { env });
  t.equal(noFile.code, 2);
  t.match(noFile.stderr, /--policy: cannot read .*absent\.yaml: ENOENT/);

  const logs = await cli(['sandbox', 'logs', 'fs', '-o', 'json'], { env });
  t.equal(logs.code, 0, logs.stderr);
  for (const line of logs.stdout.trim().split('\n').filter(Boolean)) {
    t.ok((JSON.parse(line) as { message?: string }).message !== undefined);
  }
});

t.test('sandbox exec into a closed pipe (`| head`): quiet exit 141, the command is stopped', async (t) => {
  const gw = await startGateway(t);
  const env = { OPENSHELL_GATEWAY: gw.url };
  t.equal((await cli(['sandbox', 'create', '--name', 'pipe', '--timeout', '30'], { env })).code, 0);
  const bin = fileURLToPath(new URL('../../bin/openshell.js', import.meta.url));
  for (const flags of [[], ['-t']]) {
    const marker = `marker-${flags.length}-${process.pid}`;
    const child = spawn(process.execPath, [bin, 'sandbox', 'exec', ...flags, 'pipe', '--', 'yes', marker], {
      env: { ...process.env, OPENSHELL_GATEWAY: gw.url },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    t.teardown(() => child.kill('SIGKILL'));
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    await once(child.stdout, 'data');
    child.stdout.destroy(); // the reader goes away, as `head` does after its lines
    const [code] = (await once(child, 'exit')) as [number];
    t.equal(code, 141, `exec ${flags.join(' ')}: 128 + SIGPIPE`);
    t.equal(stderr, '', 'nothing on stderr');
    const left = await cli(['sandbox', 'exec', 'pipe', '--', 'sh', '-c', `for i in $(seq 50); do pgrep -f "[${marker[0]}]${marker.slice(1)}" >/dev/null || { echo none; exit; }; sleep 0.1; done; echo still running`], { env });
    t.equal(left.stdout.trim(), 'none', 'the command is gone from the sandbox');
  }
});

t.test('sandbox exec streams stdin that stays open, and stdin past the body cap, over the WebSocket', async (t) => {
  const gw = await startGateway(t);
  const env = { OPENSHELL_GATEWAY: gw.url };
  t.equal((await cli(['sandbox', 'create', '--name', 'in', '--timeout', '60'], { env })).code, 0);
  const bin = fileURLToPath(new URL('../../bin/openshell.js', import.meta.url));
  const run = (args: string[]) => {
    const child = spawn(process.execPath, [bin, 'sandbox', 'exec', 'in', '--', ...args], {
      env: { ...process.env, OPENSHELL_GATEWAY: gw.url },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    t.teardown(() => child.kill('SIGKILL'));
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = once(child, 'exit').then(([code]) => ({ code: code as number, stdout: Buffer.concat(out), stderr }));
    return { child, out, exited };
  };

  // A producer that has not finished: the command starts at once and answers
  // each line while stdin is still open (reading stdin to its end first would wait forever).
  const chat = run(['sh', '-c', 'while read line; do echo "got $line"; done']);
  for (const word of ['one', 'two']) {
    chat.child.stdin.write(`${word}\n`);
    const deadline = Date.now() + 15_000;
    while (!Buffer.concat(chat.out).toString().includes(`got ${word}\n`) && Date.now() < deadline) {
      await Promise.race([once(chat.child.stdout, 'data'), new Promise((r) => setTimeout(r, 250))]);
    }
    t.match(Buffer.concat(chat.out).toString(), `got ${word}\n`, `answered "${word}" with stdin still open`);
  }
  chat.child.stdin.end();
  const chatEnd = await chat.exited;
  t.equal(chatEnd.code, 0, chatEnd.stderr);
  t.equal(chatEnd.stdout.toString(), 'got one\ngot two\n');

  // More than the 64 MiB request body allows: streamed, hashed in the sandbox.
  const big = randomBytes(72 * 1024 * 1024);
  const hash = run(['sh', '-c', 'sha256sum | cut -d" " -f1']);
  hash.child.stdin.end(big);
  const hashed = await hash.exited;
  t.equal(hashed.code, 0, hashed.stderr);
  t.equal(hashed.stdout.toString().split('\n')[0], createHash('sha256').update(big).digest('hex'), '72 MiB of stdin arrived intact');
});

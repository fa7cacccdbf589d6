import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { createSocket } from 'node:dgram';
import { readFileSync, writeFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { createServer as createHttpServer } from 'node:http';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import type { Sandbox } from '../../src/schemas/sandbox.js';
import { ProcessDriver } from '../../src/drivers/process.js';
import { packageRoot } from '../../src/paths.js';
import { silentLogger } from '../../src/log.js';
import { api, startGateway, tempDir, waitForPhase, waitForSandbox, type TestGateway } from '../helpers/gateway.js';
import { probeCommand, type ProbeArgs, type ProbeResult } from '../helpers/probe.js';
import { supervisorPid } from '../helpers/sandbox.js';

const run = promisify(execFile);
const cli = join(packageRoot(), 'bin', 'openshell.js');

interface ExecJson {
  exitCode: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

async function exec(url: string, name: string, command: string | string[], extra: Record<string, unknown> = {}): Promise<ExecJson> {
  const res = await fetch(`${url}/v1/sandboxes/${name}/exec`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ command, ...extra }),
  });
  const body = (await res.json()) as ExecJson;
  if (res.status !== 200) throw new Error(`exec answered ${res.status}: ${JSON.stringify(body)}`);
  return body;
}

async function listenTcp(server: Server, host = '0.0.0.0'): Promise<number> {
  server.listen(0, host);
  await once(server, 'listening');
  return (server.address() as { port: number }).port;
}

interface LogEntry {
  level: string;
  source: string;
  message: string;
  fields?: { decision?: { action?: string; host?: string; port?: number } };
}

/** Polls the sandbox's logs (NDJSON) until a line matches; false after ~5 s. */
async function logged(url: string, name: string, match: (l: LogEntry) => boolean): Promise<boolean> {
  for (let i = 0; i < 50; i++) {
    const text = await (await fetch(`${url}/v1/sandboxes/${name}/logs`)).text();
    const lines = text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as LogEntry);
    if (lines.some(match)) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

function isolated(s: Sandbox): { status: string; reason: string; message: string } | undefined {
  return s.conditions.find((c) => c.type === 'Isolated');
}

/** The sandbox's proxy address (host side of its veth pair), from its env. */
async function proxyOf(url: string, name: string): Promise<{ host: string; port: number }> {
  const r = await exec(url, name, 'echo "$HTTP_PROXY"');
  const m = /^http:\/\/([\d.]+):(\d+)$/.exec(r.stdout.trim());
  if (!m) throw new Error(`no proxy address in ${r.stdout}`);
  return { host: m[1]!, port: Number(m[2]) };
}

async function createReady(gw: TestGateway, body: Record<string, unknown>): Promise<Sandbox> {
  const res = await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', body);
  if (res.status !== 201) throw new Error(`create answered ${res.status}: ${JSON.stringify(res.body)}`);
  await waitForPhase(gw.app, res.body.name, 'Ready');
  return waitForSandbox(gw.app, res.body.name, (s) => isolated(s) !== undefined, 'isolated');
}

t.test('two confined sandboxes probe the host, the gateway and each other', async (t) => {
  // Host services the sandboxes must not reach directly: a TCP one and a UDP one on every address.
  const hits: string[] = [];
  const tcp = createServer((s) => {
    hits.push('tcp');
    s.destroy();
  });
  const tcpPort = await listenTcp(tcp);
  const udp = createSocket('udp4');
  udp.on('message', () => hits.push('udp'));
  udp.bind(0, '0.0.0.0');
  await once(udp, 'listening');
  const udpPort = udp.address().port;
  // One the policy allows, reached through the proxy.
  const web = createHttpServer((_req, res) => res.end('through the proxy'));
  const webPort = await listenTcp(web as unknown as Server, '127.0.0.1');
  t.teardown(() => {
    tcp.close();
    udp.close();
    web.close();
  });

  const gw = await startGateway(t);
  const gwPort = Number(new URL(gw.url).port);
  const policy = { version: 1, network_policies: { local: { endpoints: [{ host: '127.0.0.1', port: webPort }] } } };
  const [a, b] = await Promise.all([createReady(gw, { name: 'probe-a', policy }), createReady(gw, { name: 'probe-b', policy })]);
  for (const s of [a, b]) {
    t.match(isolated(s), { status: 'True', reason: 'namespaces' }, `${s.name} reports Isolated=True`);
  }
  const proxies = { a: await proxyOf(gw.url, 'probe-a'), b: await proxyOf(gw.url, 'probe-b') };
  t.not(proxies.a.host, proxies.b.host, 'each sandbox has its own proxy address');
  const workspace = (s: Sandbox) => join(gw.stateDir, 'sandboxes', s.id, 'workspace');

  const probe = async (me: Sandbox, other: Sandbox, mine: { host: string; port: number }, theirs: { host: string; port: number }) => {
    const args: ProbeArgs = {
      tcp: {
        gateway4: ['127.0.0.1', gwPort],
        gateway6: ['::1', gwPort],
        loopbackService: ['127.0.0.1', tcpPort],
        hostServiceViaVeth: [mine.host, tcpPort],
        internet: ['1.1.1.1', 80],
        otherProxy: [theirs.host, theirs.port],
        ownProxy: [mine.host, mine.port],
      },
      udp: { loopback: ['127.0.0.1', udpPort], viaVeth: [mine.host, udpPort], internet: ['1.1.1.1', 53] },
      unix: [join(gw.stateDir, 'gateway.sock')],
      paths: [gw.stateDir, workspace(other), join(gw.stateDir, 'openshell.db'), '/root'],
      plant: workspace(other),
      write: ['/usr/probe', '/etc/probe', '/bin/probe', '/workspace/ok'],
      pids: [supervisorPid(gw.stateDir, me.id), process.pid],
    };
    const r = await exec(gw.url, me.name, probeCommand(args));
    t.equal(r.exitCode, 0, `${me.name}: the probe ran (${r.stderr})`);
    return JSON.parse(r.stdout) as ProbeResult;
  };
  const results = await Promise.all([probe(a, b, proxies.a, proxies.b), probe(b, a, proxies.b, proxies.a)]);
  for (const [i, r] of results.entries()) {
    const name = i === 0 ? 'probe-a' : 'probe-b';
    t.not(r.uid, 0, `${name}: not root`);
    t.not(r.euid, 0);
    t.equal(r.capEff, '0000000000000000', `${name}: no effective capabilities`);
    t.equal(r.capBnd, '0000000000000000', `${name}: empty bounding set`);
    t.equal(r.noNewPrivs, '1', `${name}: no_new_privs`);
    t.not(r.unshareUser, 0, `${name}: unshare -U fails`);
    t.not(r.unshareUserMap, 0, `${name}: unshare -Ur fails`);
    for (const k of ['gateway4', 'gateway6', 'loopbackService', 'hostServiceViaVeth', 'internet', 'otherProxy']) {
      t.not(r.tcp[k], 'connected', `${name}: direct TCP ${k} fails (${r.tcp[k]})`);
    }
    t.equal(r.tcp.ownProxy, 'connected', `${name}: its own proxy is reachable`);
    t.not(r.udp.internet, 'sent', `${name}: UDP to the internet fails (${r.udp.internet})`);
    t.same(Object.values(r.unix), ['ENOENT'], `${name}: the gateway's Unix socket is not there`);
    t.same(Object.values(r.visible), [false, false, false, false], `${name}: state dir, the other workspace, the db, /root invisible`);
    t.equal(r.throughLink, 'ENOENT', `${name}: a planted symlink leads nowhere`);
    t.match(r.write, { '/usr/probe': /EROFS|EACCES/, '/etc/probe': /EROFS|EACCES/, '/bin/probe': /EROFS|EACCES/, '/workspace/ok': 'written' });
    t.same(Object.values(r.signal), ['ESRCH', 'ESRCH'], `${name}: the supervisor and the gateway cannot be signalled`);
    t.same(Object.values(r.procVisible), [false, false], `${name}: nor seen in /proc`);
    t.equal(r.shadow, false, `${name}: no /etc/shadow`);
    t.not(r.uid, results[1 - i]!.uid, 'each sandbox has its own uid');
  }
  t.same(hits, [], 'no direct packet reached a host service');

  // The proxy works (policy allows the loopback server) and logs the request.
  const via = await exec(gw.url, 'probe-a', `curl -sS -m 5 http://127.0.0.1:${webPort}/`);
  t.equal(via.stdout, 'through the proxy', 'the egress proxy carries allowed requests');
  const direct = await exec(gw.url, 'probe-a', `curl -sS -m 3 --noproxy '*' http://127.0.0.1:${webPort}/`);
  t.not(direct.exitCode, 0, 'the same request around the proxy fails');
  t.ok(await logged(gw.url, 'probe-a', (l) => l.source === 'egress' && l.fields?.decision?.port === webPort), 'the proxy logged the decision');

  // A symlink planted in the workspace is followed inside the sandbox, also by the supervisor's checks.
  const hostOnly = join(tempDir(t), 'host-only');
  writeFileSync(hostOnly, '#!/bin/sh\necho escaped\n', { mode: 0o755 });
  await exec(gw.url, 'probe-a', ['ln', '-s', hostOnly, '/workspace/host-cmd']);
  await exec(gw.url, 'probe-a', ['ln', '-s', '/usr/bin/true', '/workspace/own-cmd']);
  t.equal((await exec(gw.url, 'probe-a', ['/workspace/own-cmd'])).exitCode, 0, 'a link to a sandbox file runs');
  const res = await fetch(`${gw.url}/v1/sandboxes/probe-a/exec`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ command: ['/workspace/host-cmd'] }),
  });
  t.match(await res.text(), /command not found/, 'a link to a host file is not found, before anything starts');

  // kill -9 -1 inside ends the sandbox's own processes only.
  const pid = supervisorPid(gw.stateDir, a.id);
  // Linux spares the caller of kill(-1): the shell stays to report on its child.
  const killed = await exec(gw.url, 'probe-a', ['sh', '-c', 'sleep 100 & kill -9 -1; wait $!; echo "sleep ended $?"']);
  t.equal(killed.stdout, 'sleep ended 137\n', 'kill -9 -1 killed the sandbox’s processes');
  t.doesNotThrow(() => process.kill(pid, 0), 'the supervisor survived it');
  const after = await exec(gw.url, 'probe-a', 'echo still here');
  t.equal(after.stdout, 'still here\n', 'and keeps serving execs');
});

t.test('one set of namespaces per sandbox: execs, SSH and the entrypoint share them', async (t) => {
  const gw = await startGateway(t);
  await createReady(gw, { name: 'shared', command: ['sh', '-c', 'echo from-main > /tmp/main-was-here; exec sleep 100000'] });
  const server = await exec(gw.url, 'shared', [
    'sh',
    '-c',
    'nohup python3 -m http.server 8765 --bind 127.0.0.1 > /dev/null 2>&1 & echo started',
  ]);
  t.equal(server.stdout, 'started\n');
  const fetched = await exec(gw.url, 'shared', [
    'sh',
    '-c',
    'for i in $(seq 100); do c=$(curl -s --noproxy "*" -o /dev/null -w "%{http_code}" http://127.0.0.1:8765/); [ "$c" = 200 ] && { echo $c; exit 0; }; sleep 0.1; done; exit 1',
  ]);
  t.equal(fetched.stdout, '200\n', 'a server started by one exec answers the next on localhost');
  const ps = await exec(gw.url, 'shared', 'ps -eo pid,user,args');
  t.match(ps.stdout, /http\.server 8765/, 'ps lists it');
  t.match(ps.stdout, /sleep 100000/, 'and the entrypoint');
  t.notMatch(ps.stdout, /openshell-supervisor|node /, 'but not the supervisor');
  const pids = ps.stdout.trim().split('\n').slice(1).map((l) => Number(l.trim().split(/\s+/)[0]));
  t.ok(Math.max(...pids) < 1000, 'pids are the sandbox namespace’s own');
  const tmp = await exec(gw.url, 'shared', 'cat /tmp/main-was-here');
  t.equal(tmp.stdout, 'from-main\n', 'execs see the entrypoint’s /tmp');
  const hostname = await exec(gw.url, 'shared', 'hostname');
  t.equal(hostname.stdout, 'shared\n', 'the sandbox has its own hostname');

  // SSH sessions (OpenSSH through the gateway) run in the same sandbox, as its user; SFTP too.
  const { stdout: config } = await run(process.execPath, [cli, 'sandbox', 'ssh-config', 'shared', '--gateway', gw.url]);
  const file = join(tempDir(t), 'ssh_config');
  writeFileSync(file, config);
  const ssh = await run('ssh', ['-F', file, 'shared', 'id -un; cat /tmp/main-was-here; pwd; ps -eo args | grep -c "http.server 876[5]"'], { timeout: 30_000 });
  t.equal(ssh.stdout, 'sandbox\nfrom-main\n/workspace\n1\n', 'an SSH session sees the same user, /tmp, workspace and processes');
  const local = join(tempDir(t), 'up.txt');
  writeFileSync(local, 'sent over sftp\n');
  const batch = join(tempDir(t), 'batch');
  writeFileSync(batch, `put ${local} /tmp/up.txt\n`);
  await run('sftp', ['-F', file, '-b', batch, 'shared'], { timeout: 30_000 });
  const up = await exec(gw.url, 'shared', 'cat /tmp/up.txt; stat -c %U /tmp/up.txt');
  t.equal(up.stdout, 'sent over sftp\nsandbox\n', 'SFTP writes inside the sandbox, as its user');
});

t.test('resources: pids, memory and cpus are enforced, the supervisor keeps serving', async (t) => {
  const gw = await startGateway(t);
  const s = await createReady(gw, { name: 'limited', resources: { pids: 40, memoryMb: 96, cpus: 0.25 } });
  t.same(s.resources, { pids: 40, memoryMb: 96, cpus: 0.25 });
  t.match(isolated(s)?.message, /limits in/, 'the Isolated condition names the cgroup');

  const bomb = await exec(gw.url, 'limited', [
    '/usr/bin/python3',
    '-c',
    [
      'import os, time',
      'n = 0',
      'try:',
      '    while n < 1000:',
      '        if os.fork() == 0:',
      '            time.sleep(30); os._exit(0)',
      '        n += 1',
      'except OSError as e:',
      '    print(n, e.errno, flush=True)',
      'os.killpg(0, 9)',
    ].join('\n'),
  ], { timeoutSeconds: 20 });
  const [started, errnum] = bomb.stdout.trim().split(' ').map(Number);
  t.ok(started! < 40, `the fork bomb stopped at the pids limit (${started} forks)`);
  t.equal(errnum, 11, 'with EAGAIN');
  t.equal(bomb.signal, 'SIGKILL', 'the bomb took its forks with it');

  const hog = await exec(gw.url, 'limited', ['/usr/bin/python3', '-c', 'a = []\nwhile True: a.append(bytearray(16 << 20))'], { timeoutSeconds: 30 });
  t.equal(hog.signal, 'SIGKILL', 'a memory hog is killed at memoryMb');
  const alive = await exec(gw.url, 'limited', 'echo alive');
  t.equal(alive.stdout, 'alive\n', 'the supervisor keeps answering');

  const busy = await exec(gw.url, 'limited', [
    '/usr/bin/python3',
    '-c',
    'import time\nw = time.time(); c = time.process_time()\nwhile time.time() - w < 2: pass\nprint((time.process_time() - c) / (time.time() - w))',
  ]);
  const ratio = Number(busy.stdout.trim());
  t.ok(ratio < 0.4, `cpus caps a busy loop (CPU time / wall time ${ratio.toFixed(2)} for cpus 0.25)`);
  const stat = readFileSync(`/sys/fs/cgroup/cpu/openshell/${s.id}/cpu.stat`, 'utf8');
  t.match(stat, /nr_throttled [1-9]/, 'the kernel throttled it');
});

t.test('fail closed: without bwrap the sandbox is Error naming it; --isolation none runs and says so', async (t) => {
  const stateDir = tempDir(t);
  // A PATH without /usr/bin: bwrap, nsenter, setpriv, setsid and sleep are not found.
  const driver = new ProcessDriver({ stateDir, log: silentLogger, supervisorEnv: { PATH: '/usr/sbin:/sbin' } });
  const gw = await startGateway(t, { stateDir }, { driver });
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'no-bwrap' });
  const failed = await waitForPhase(gw.app, 'no-bwrap', 'Error');
  t.equal(failed.conditions[0]?.reason, 'ConfinementFailed');
  t.match(failed.conditions[0]?.message, /bwrap/, 'the message names the missing tool');
  t.match(failed.conditions[0]?.message, /bubblewrap/, 'and its package');
  t.match(isolated(failed), { status: 'False', reason: 'ConfinementFailed' });

  const open = await startGateway(t, { isolation: 'none' });
  const s = await createReady(open, { name: 'unconfined' });
  t.match(isolated(s), { status: 'False', reason: 'Disabled' }, 'Isolated=False');
  const who = await exec(open.url, 'unconfined', 'id -u');
  t.equal(who.stdout, `${process.getuid?.()}\n`, 'runs as the supervisor’s user');
  t.ok(await logged(open.url, 'unconfined', (l) => l.level === 'warn' && /unconfined/.test(l.message)), 'with a warning in its logs');
});

t.test('bad resources are a 400 naming the field', async (t) => {
  const gw = await startGateway(t);
  for (const [resources, field] of [
    [{ pids: -1 }, 'pids'],
    [{ pids: 1.5 }, 'pids'],
    [{ memoryMb: 1e12 }, 'memoryMb'],
    [{ cpus: 0 }, 'cpus'],
    [{ cpus: 'two' }, 'cpus'],
    [{ diskMb: 0 }, 'diskMb'],
    [{ gpus: 1 }, 'resources'],
  ] as const) {
    const res = await api<{ error: { code: string; message: string } }>(gw.url, 'POST', '/v1/sandboxes', { resources });
    t.equal(res.status, 400, JSON.stringify(resources));
    t.equal(res.body.error.code, 'INVALID_ARGUMENT');
    t.match(res.body.error.message, field, `names ${field}`);
  }
});

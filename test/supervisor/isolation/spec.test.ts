import t from 'tap';
import {
  groupFile,
  hostNetBatch,
  initArgs,
  joinArgv,
  netForSlot,
  nftRuleset,
  passwdFile,
  type ConfinementSpec,
} from '../../../src/supervisor/isolation/spec.js';
import type { ToolSet } from '../../../src/supervisor/isolation/tools.js';

const tools: ToolSet = {
  bwrap: ['/usr/bin/bwrap'],
  nsenter: ['/usr/bin/nsenter'],
  setpriv: ['/usr/bin/setpriv'],
  setsid: ['/usr/bin/setsid'],
  ip: ['/usr/sbin/ip'],
  nft: ['/usr/sbin/nft'],
  sleep: ['/usr/bin/sleep'],
};

const spec = (over: Partial<ConfinementSpec> = {}): ConfinementSpec => ({
  hostname: 'box',
  uid: 2_000_000_007,
  gid: 2_000_000_007,
  system: [
    { path: '/usr', symlink: null },
    { path: '/bin', symlink: 'usr/bin' },
  ],
  etc: ['/etc/ssl/certs', '/etc/hosts'],
  generatedEtc: { passwd: '/run/x/passwd' },
  workspace: '/state/sbx/workspace',
  tmpMb: 64,
  extraBinds: [],
  net: netForSlot(7),
  ...over,
});

t.test('slots: each owns a /30, its veth name is the lock', async (t) => {
  t.same(netForSlot(0), { hostIf: 'osh0h', hostAddr: '10.231.0.1', sandboxAddr: '10.231.0.2', prefix: 30, proxyPort: 3128 });
  t.match(netForSlot(16383), { hostIf: 'osh16383h', hostAddr: '10.231.255.253', sandboxAddr: '10.231.255.254' });
  t.ok(netForSlot(16383).hostIf.length <= 15, 'fits IFNAMSIZ');
});

t.test('init: every namespace, the view under /s, parents walkable, the workspace writable', async (t) => {
  const a = initArgs(spec());
  for (const ns of ['--unshare-pid', '--unshare-net', '--unshare-ipc', '--unshare-uts', '--unshare-cgroup-try']) t.ok(a.includes(ns), ns);
  t.ok(a.includes('--die-with-parent'));
  t.notOk(a.includes('--unshare-user'), 'no user namespace: real uids, so files are owned by the sandbox user');
  const pairs = (op: string) => a.flatMap((x, i) => (x === op ? [[a[i + 1], a[i + 2]]] : []));
  t.same(pairs('--ro-bind'), [['/usr', '/s/usr'], ['/etc/ssl/certs', '/s/etc/ssl/certs'], ['/etc/hosts', '/s/etc/hosts'], ['/run/x/passwd', '/s/etc/passwd']]);
  t.same(pairs('--bind'), [['/state/sbx/workspace', '/s/workspace']], 'only the workspace is writable');
  t.ok(pairs('--symlink').some(([src, dest]) => src === 'usr/bin' && dest === '/s/bin'), 'host symlinks recreated');
  // Every parent made before its child, 0755 (bwrap's own would be 0700).
  const dirs = a.flatMap((x, i) => (x === '--dir' ? [a[i + 1]] : []));
  t.ok(dirs.includes('/s') && dirs.includes('/s/etc') && dirs.includes('/s/etc/ssl'));
  for (const d of dirs) t.equal(a[a.indexOf(d!) - 2 - 1], '--perms', `${d} gets --perms`);
  const tmp = a.indexOf('/s/tmp');
  t.same(a.slice(tmp - 5, tmp + 1), ['--perms', '1777', '--size', String(64 * 1024 * 1024), '--tmpfs', '/s/tmp']);
  t.notOk(a.includes('--'), 'options only: the holder follows on the command line');
});

t.test('join: namespaces, the root, a new session, the sandbox user without privileges', async (t) => {
  const argv = joinArgv(spec(), tools, { initPid: 4242, cwd: '/workspace/src', tty: false }, ['sh', '-c', 'echo hi']);
  t.same(argv, [
    '/usr/bin/nsenter', '--target=4242', '--mount', '--uts', '--ipc', '--net', '--pid', '--cgroup',
    '--root=/proc/4242/root/s', '--wdns=/workspace/src', '--',
    '/usr/bin/setsid',
    '/usr/bin/setpriv', '--reuid=2000000007', '--regid=2000000007', '--clear-groups',
    '--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all', '--no-new-privs', '--',
    'sh', '-c', 'echo hi',
  ]);
  const tty = joinArgv(spec(), tools, { initPid: 1, cwd: '/', tty: true }, ['bash']);
  t.equal(tty[tty.indexOf('/usr/bin/setsid') + 1], '--ctty', 'a tty exec keeps its terminal');
  const bundled = joinArgv(spec(), { ...tools, setsid: ['/opt/b/lib/ld.so', '--library-path', '/opt/b/lib', '/opt/b/tools/setsid'] }, { initPid: 1, cwd: '/', tty: false }, ['x']);
  t.ok(bundled.includes('/opt/b/tools/setsid'), 'bundled tools run through the loader');
});

t.test('network: the veth pair and rules that let out only the proxy', async (t) => {
  const net = netForSlot(7);
  t.equal(hostNetBatch(net, 99).split('\n')[0], 'link add osh7h type veth peer name eth0 netns 99');
  const rules = nftRuleset(net);
  t.match(rules, /chain output \{\n\s+type filter hook output priority 0; policy drop;/);
  t.match(rules, /ip daddr 10\.231\.0\.29 tcp dport 3128 accept/);
  t.match(rules, /reject with tcp reset/);
  t.notMatch(rules, /ip6 daddr/, 'no IPv6 way out');
});

t.test('passwd and group: system accounts, the sandbox user, no secrets', async (t) => {
  const host = 'root:x:0:0:root:/root:/bin/bash\nalice:$6$hash:1000:1000::/home/alice:/bin/bash\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n';
  const p = passwdFile(host, 2_000_000_007, 2_000_000_007, '/bin/sh');
  t.match(p, /^root:x:0:0/);
  t.notMatch(p, /alice/, 'host users are not listed');
  t.match(p, /sandbox:x:2000000007:2000000007:openshell sandbox:\/workspace\/\.home:\/bin\/sh\n$/);
  const g = groupFile('root:x:0:\nshadow:x:42:\nalice:x:1000:\n', 2_000_000_007);
  t.equal(g, 'root:x:0:\nshadow:x:42:\nsandbox:x:2000000007:\n');
});

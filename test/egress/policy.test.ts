import t from 'tap';
import { PolicyError, parsePolicy, parsePolicyText, type Policy } from '../../src/egress/index.js';
import { CompiledPolicy, canonicalPath, checkRequest, compilePathGlob } from '../../src/egress/policy.js';
import { normalizeHost } from '../../src/egress/ip.js';

function withEndpoint(ep: Record<string, unknown>): unknown {
  return { version: 1, network_policies: { github: { endpoints: [ep] } } };
}

function withBinaries(binaries: unknown[]): unknown {
  return { version: 1, network_policies: { github: { endpoints: [{ host: 'api.github.com', port: 443 }], binaries } } };
}

t.test('valid policies parse (YAML and JSON)', async (t) => {
  const yaml = `
version: 1
network_policies:
  github:
    name: GitHub API
    endpoints:
      - host: api.github.com
        port: 443
        protocol: rest
        access: read-only
        deny_rules: [{method: DELETE, path: "/**"}]
        enforcement: audit
      - host: "**.githubusercontent.com"
        ports: [443, 80]
        allowed_ips: ["10.0.0.0/8", "fd00::/8", "192.168.1.1"]
    binaries: [{path: /usr/bin/curl}]
`;
  const p = parsePolicyText(yaml);
  t.equal(p.network_policies.github!.endpoints.length, 2);
  const json = parsePolicyText(JSON.stringify(withEndpoint({ host: 'a.example.com', port: 80, protocol: 'rest', rules: [{ allow: { method: 'GET', path: '/repos/**' } }] })));
  t.equal(json.network_policies.github!.endpoints[0]!.host, 'a.example.com');
});

t.test('invalid policies throw PolicyError naming the field', async (t) => {
  const cases: Array<[string, unknown, RegExp]> = [
    ['star host', withEndpoint({ host: '*', port: 443 }), /^network_policies\.github\.endpoints\[0\]\.host: wildcard '\*' is not allowed/],
    ['double star host', withEndpoint({ host: '**', port: 443 }), /endpoints\[0\]\.host: wildcard '\*\*'/],
    ['TLD wildcard', withEndpoint({ host: '*.com', port: 443 }), /endpoints\[0\]\.host: .*top-level domain/],
    ['deep TLD wildcard', withEndpoint({ host: '**.com', port: 443 }), /endpoints\[0\]\.host: .*top-level domain/],
    ['mid-label wildcard', withEndpoint({ host: 'a.*.example.com', port: 443 }), /endpoints\[0\]\.host/],
    ['access and rules', withEndpoint({ host: 'a.b.com', port: 1, protocol: 'rest', access: 'full', rules: [{ allow: { method: 'GET', path: '/' } }] }), /endpoints\[0\]\.rules: 'access' and 'rules'/],
    ['port 0', withEndpoint({ host: 'a.b.com', port: 0 }), /endpoints\[0\]\.port/],
    ['port 70000', withEndpoint({ host: 'a.b.com', port: 70000 }), /endpoints\[0\]\.port/],
    ['port string', withEndpoint({ host: 'a.b.com', port: 'https' }), /endpoints\[0\]\.port/],
    ['ports bad item', withEndpoint({ host: 'a.b.com', ports: [443, -1] }), /endpoints\[0\]\.ports\[1\]/],
    ['no port', withEndpoint({ host: 'a.b.com' }), /endpoints\[0\]\.port: 'port' or 'ports' is required/],
    ['unknown protocol', withEndpoint({ host: 'a.b.com', port: 5432, protocol: 'sql' }), /endpoints\[0\]\.protocol/],
    ['bad CIDR', withEndpoint({ host: 'a.b.com', port: 1, allowed_ips: ['10.0.0.0/33'] }), /endpoints\[0\]\.allowed_ips\[0\]: invalid IP or CIDR/],
    ['bad IP', withEndpoint({ host: 'a.b.com', port: 1, allowed_ips: ['10.0.0.300'] }), /allowed_ips\[0\]/],
    ['bad access', withEndpoint({ host: 'a.b.com', port: 1, protocol: 'rest', access: 'everything' }), /endpoints\[0\]\.access: expected one of/],
    ['bad enforcement', withEndpoint({ host: 'a.b.com', port: 1, enforcement: 'maybe' }), /endpoints\[0\]\.enforcement/],
    ['rest without access', withEndpoint({ host: 'a.b.com', port: 1, protocol: 'rest' }), /endpoints\[0\]\.access/],
    ['access without rest', withEndpoint({ host: 'a.b.com', port: 1, access: 'full' }), /endpoints\[0\]\.access: .*protocol: rest/],
    ['bad method', withEndpoint({ host: 'a.b.com', port: 1, protocol: 'rest', rules: [{ allow: { method: 'GE T', path: '/' } }] }), /rules\[0\]\.allow\.method/],
    ['relative path glob', withEndpoint({ host: 'a.b.com', port: 1, protocol: 'rest', access: 'full', deny_rules: [{ method: 'GET', path: 'x/**' }] }), /deny_rules\[0\]\.path/],
    ['unknown field', withEndpoint({ host: 'a.b.com', port: 1, tls: 'terminate' }), /endpoints\[0\]/],
    ['relative binary', withBinaries([{ path: '/usr/bin/curl' }, { path: 'curl' }]), /^network_policies\.github\.binaries\[1\]\.path: binary path must be absolute/],
    ['binary with ..', withBinaries([{ path: '/usr/bin/../../tmp/x' }]), /binaries\[0\]\.path: .*'\.\.'/],
    ['binary with a space', withBinaries([{ path: '/usr/bin/cu rl' }]), /binaries\[0\]\.path: .*whitespace/],
    ['binary without path', withBinaries([{ name: 'curl' }]), /binaries\/?\[?0/],
    ['bad version', { version: 2, network_policies: {} }, /^version/],
    ['missing network_policies', { version: 1 }, /network_policies/],
    ['not an object', 'nope', /policy must be an object/],
  ];
  for (const [name, input, re] of cases) {
    try {
      parsePolicy(input);
      t.fail(`${name}: accepted`);
    } catch (err) {
      t.ok(err instanceof PolicyError, `${name}: PolicyError`);
      t.match((err as Error).message, re, `${name}: ${(err as Error).message}`);
    }
  }
  t.throws(() => parsePolicyText('network_policies: [unclosed'), PolicyError);
});

t.test('host matching: exact, *. one label, **. any depth', async (t) => {
  const p = new CompiledPolicy(
    parsePolicy({
      network_policies: {
        a: { endpoints: [{ host: 'api.example.com', port: 443 }] },
        b: { endpoints: [{ host: '*.one.example', ports: [80, 443] }] },
        c: { endpoints: [{ host: '**.deep.example', port: 443 }] },
        d: { endpoints: [{ host: '127.0.0.1', port: 8080 }] },
      },
    }),
  );
  const m = (h: string, port: number): string | undefined => {
    const n = normalizeHost(h)!;
    return p.match(n.kind === 'ip' ? n.addr.text : n.name, port)?.policy;
  };
  t.equal(m('api.example.com', 443), 'a');
  t.equal(m('API.Example.COM.', 443), 'a', 'case and trailing dot');
  t.equal(m('api.example.com', 80), undefined, 'port mismatch');
  t.equal(m('x.api.example.com', 443), undefined);
  t.equal(m('x.one.example', 80), 'b');
  t.equal(m('y.x.one.example', 80), undefined, '* is one label');
  t.equal(m('one.example', 80), undefined, 'wildcard needs a label');
  t.equal(m('x.deep.example', 443), 'c');
  t.equal(m('z.y.x.deep.example', 443), 'c', '** any depth');
  t.equal(m('evildeep.example', 443), undefined, 'suffix must be on a label boundary');
  t.equal(m('2130706433', 8080), 'd', 'numeric spelling of an IP host');
  t.equal(m('[::ffff:127.0.0.1]', 8080), 'd', 'IPv4-mapped spelling');
});

t.test('path globs and canonical paths', async (t) => {
  t.ok(compilePathGlob('/repos/**').test('/repos/a/b/c'));
  t.ok(compilePathGlob('/repos/**').test('/repos'));
  t.notOk(compilePathGlob('/repos/**').test('/reposx'));
  t.ok(compilePathGlob('/repos/*/issues').test('/repos/x/issues'));
  t.notOk(compilePathGlob('/repos/*/issues').test('/repos/x/y/issues'));
  t.ok(compilePathGlob('/a/**/z').test('/a/b/c/z'));
  t.ok(compilePathGlob('/**').test('/'));
  t.equal(canonicalPath('/a/./b/../c?x=1'), '/a/c');
  t.equal(canonicalPath('//a//b/'), '/a/b/');
  t.equal(canonicalPath('/a/%2e%2e/b'), '/b');
  t.equal(canonicalPath('/%61dmin'), '/admin');
  t.equal(canonicalPath('/..'), null);
  t.equal(canonicalPath('/a/../../etc'), null);
  t.equal(canonicalPath('/a%2fb'), null);
  t.equal(canonicalPath('/a%5Cb'), null);
  t.equal(canonicalPath('/a\\b'), null);
  t.equal(canonicalPath('/%zz'), null);
});

t.test('access presets, rules, deny_rules win', async (t) => {
  const compile = (ep: Record<string, unknown>) =>
    new CompiledPolicy(parsePolicy(withEndpoint({ host: 'a.b.com', port: 1, protocol: 'rest', ...ep }) as Policy)).endpoints[0]!;
  const ro = compile({ access: 'read-only' });
  const rw = compile({ access: 'read-write' });
  const full = compile({ access: 'full', deny_rules: [{ method: 'DELETE', path: '/protected/**' }] });
  for (const m of ['GET', 'HEAD', 'OPTIONS']) t.ok(checkRequest(ro, m, '/x').allowed, `read-only ${m}`);
  for (const m of ['POST', 'PUT', 'PATCH', 'DELETE']) t.notOk(checkRequest(ro, m, '/x').allowed, `read-only denies ${m}`);
  for (const m of ['POST', 'PUT', 'PATCH']) t.ok(checkRequest(rw, m, '/x').allowed, `read-write ${m}`);
  t.notOk(checkRequest(rw, 'DELETE', '/x').allowed);
  t.ok(checkRequest(full, 'DELETE', '/x').allowed);
  t.notOk(checkRequest(full, 'DELETE', '/protected/a/b').allowed, 'deny rule wins over full');
  const rules = compile({
    rules: [{ allow: { method: 'GET', path: '/repos/**' } }, { allow: { method: '*', path: '/any/*' } }],
    deny_rules: [{ method: 'GET', path: '/repos/*/secrets/**' }],
  });
  t.ok(checkRequest(rules, 'GET', '/repos/o/r/issues').allowed);
  t.notOk(checkRequest(rules, 'POST', '/repos/o/r').allowed);
  t.notOk(checkRequest(rules, 'GET', '/repos/o/secrets/x').allowed, 'deny_rules win over rules');
  t.ok(checkRequest(rules, 'PATCH', '/any/x').allowed, 'method *');
  t.notOk(checkRequest(rules, 'GET', '/other').allowed);
});

t.test('binaries: compiled per policy; match passes over endpoints whose binaries the caller is not among', async (t) => {
  const p = new CompiledPolicy(
    parsePolicy({
      version: 1,
      network_policies: {
        tools: { endpoints: [{ host: 'api.github.com', port: 443 }], binaries: [{ path: '/usr/bin/curl' }, { path: '/opt/agent/**' }] },
        any: { endpoints: [{ host: 'pypi.example.com', port: 443 }], binaries: [] },
      },
    }),
  );
  t.equal(p.needsCaller, true);
  const caller = (exe: string, ...ancestors: string[]) => ({ procs: [{ pid: 1, exe, ancestors }] });
  t.equal(p.match('api.github.com', 443, caller('/usr/bin/curl'))?.policy, 'tools');
  t.equal(p.match('api.github.com', 443, caller('/usr/bin/wget')), null);
  t.equal(p.match('api.github.com', 443, caller('/usr/bin/wget', '/usr/bin/dash', '/opt/agent/bin/node'))?.policy, 'tools', 'an ancestor, by glob');
  t.equal(p.match('api.github.com', 443, caller('/opt/agentx/node')), null, '** stays under its directory');
  t.equal(
    p.match('api.github.com', 443, { procs: [{ pid: 1, exe: '/usr/bin/curl', ancestors: [] }, { pid: 2, exe: '/usr/bin/wget', ancestors: [] }] }),
    null,
    'every process holding the connection must be listed',
  );
  t.equal(p.match('api.github.com', 443, { unknown: 'gone' }), null, 'an unidentified caller matches no restricted endpoint');
  t.equal(p.match('api.github.com', 443), null, 'no caller given: restricted endpoints pass over');
  t.equal(p.match('pypi.example.com', 443, caller('/usr/bin/wget'))?.policy, 'any', 'an empty list restricts nothing');
  t.equal(new CompiledPolicy(parsePolicy(withEndpoint({ host: 'a.b.com', port: 1 }))).needsCaller, false);
});

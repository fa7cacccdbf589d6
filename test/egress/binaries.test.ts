import t from 'tap';
import type { Test } from 'tap';
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { copyFileSync, mkdirSync, mkdtempSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { EgressProxy, Policy } from '../../src/egress/index.js';
import { connectVia, forwardRequest, portOf, startHttp, startProxy, within } from './fixtures/helpers.js';

const API = 'api.example.test';
const CURL = realpathSync('/usr/bin/curl');
const SH = realpathSync('/bin/sh');
const NODE = realpathSync(process.execPath);

/** A temp dir with copies of curl and sh at other paths: other executables as far as the kernel is concerned. */
function tools(t: Test): { dir: string; otherCurl: string; deepCurl: string; sh2: string } {
  const dir = mkdtempSync(join(tmpdir(), 'openshell-bin-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'bin', 'deep'), { recursive: true });
  const otherCurl = join(dir, 'othercurl');
  const deepCurl = join(dir, 'bin', 'deep', 'curl');
  const sh2 = join(dir, 'bin', 'sh2');
  copyFileSync(CURL, otherCurl, 0);
  copyFileSync(CURL, deepCurl, 0);
  copyFileSync(SH, sh2, 0); // libuv's copyfile keeps the mode: still executable
  return { dir: realpathSync(dir), otherCurl: realpathSync(otherCurl), deepCurl: realpathSync(deepCurl), sh2: realpathSync(sh2) };
}

interface CurlResult {
  status: number;
  body: string;
}

/**
 * `curl` (or the executable given) through the proxy: forward mode, or a
 * CONNECT tunnel with `tunnel`; `shell` runs it under that shell; `argv0`
 * gives it that argv[0] (bash's `exec -a`).
 */
function curl(
  proxy: EgressProxy,
  url: string,
  o: { exe?: string; tunnel?: boolean; shell?: string; argv0?: string } = {},
): Promise<CurlResult> {
  const args = ['-s', '-m', '8', '--noproxy', '', '-x', proxy.url, ...(o.tunnel ? ['-p'] : []), '-w', '\n%{http_code}:%{http_connect}', url];
  const exe = o.exe ?? '/usr/bin/curl';
  const [file, argv] = o.argv0
    ? ['/bin/bash', ['-c', `exec -a ${o.argv0} "$0" "$@"`, exe, ...args]]
    : o.shell
      ? [o.shell, ['-c', `"$0" "$@"; true`, exe, ...args]]
      : [exe, args];
  return new Promise((resolve, reject) => {
    execFile(file, argv, { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } }, (err, stdout) => {
      if (err && !stdout) return reject(err);
      // A refused CONNECT: no response, the CONNECT's status in %{http_connect}.
      const i = stdout.lastIndexOf('\n');
      const [code, connect] = stdout.slice(i + 1).split(':').map(Number);
      resolve({ status: code || connect || 0, body: stdout.slice(0, i) });
    });
  });
}

function restricted(port: number, binaries: string[], extra: Record<string, unknown> = {}): Policy {
  return {
    version: 1,
    network_policies: {
      tools: { endpoints: [{ host: API, port, allowed_ips: ['127.0.0.1/32'], ...extra }], binaries: binaries.map((path) => ({ path })) },
    },
  } as Policy;
}

t.test('binaries: only a listed executable may use the endpoints, through both front doors', async (t) => {
  const server = await startHttp(t);
  const port = portOf(server);
  const bin = tools(t);
  const { proxy, decisions } = await startProxy(t, restricted(port, [CURL]));
  const url = `http://${API}:${port}/hello`;
  await within(30_000, (async () => {
    const fwd = await curl(proxy, url);
    t.equal(fwd.status, 200, 'curl, forward');
    t.match(JSON.parse(fwd.body), { url: '/hello' });
    t.equal((await curl(proxy, url, { tunnel: true })).status, 200, 'curl, CONNECT');
    t.match(decisions.at(-1), { action: 'allow', policy: 'tools', binary: CURL, layer: 'L4' });

    const other = await curl(proxy, url, { exe: bin.otherCurl });
    t.equal(other.status, 403, 'another executable, forward');
    const body = JSON.parse(other.body) as Record<string, unknown>;
    t.match(body, { host: API, port, policy: 'tools', binary: bin.otherCurl, layer: 'L4' });
    t.match(body.reason, `${bin.otherCurl} is not among the binaries of policy 'tools'`);
    t.equal((await curl(proxy, url, { exe: bin.otherCurl, tunnel: true })).status, 403, 'another executable, CONNECT');
    t.match(decisions.at(-1), { action: 'deny', policy: 'tools', binary: bin.otherCurl });
    const spoof = await curl(proxy, url, { exe: bin.otherCurl, argv0: CURL });
    t.equal(spoof.status, 403, 'argv[0] naming a listed binary changes nothing');
    t.match(JSON.parse(spoof.body), { binary: bin.otherCurl });

    const own = await forwardRequest(proxy, url);
    t.equal(own.status, 403, 'this test process, the root (as the supervisor is in a sandbox), is nobody\'s caller');
    t.match(JSON.parse(own.body), { binary: /^unidentified process/ });
  })());
});

t.test('binaries: an ancestor inside the tree counts, and globs match paths', async (t) => {
  const server = await startHttp(t);
  const port = portOf(server);
  const bin = tools(t);
  const { proxy } = await startProxy(t, restricted(port, [`${bin.dir}/bin/**`]));
  const url = `http://${API}:${port}/x`;
  await within(30_000, (async () => {
    t.equal((await curl(proxy, url, { shell: bin.sh2 })).status, 200, 'curl run by a listed shell');
    const plain = await curl(proxy, url, { shell: SH });
    t.equal(plain.status, 403, 'curl run by another shell');
    t.match(JSON.parse(plain.body), { binary: `${CURL} (via ${SH})` });
    t.equal((await curl(proxy, url, { exe: bin.deepCurl })).status, 200, '** matches any depth');
  })());
});

t.test('binaries: two policies on one host each let their own binary through; audit lets any through and says so', async (t) => {
  const server = await startHttp(t);
  const port = portOf(server);
  const bin = tools(t);
  const ep = { host: API, port, allowed_ips: ['127.0.0.1/32'] };
  const policy = {
    version: 1,
    network_policies: {
      curl: { endpoints: [ep], binaries: [{ path: CURL }] },
      other: { endpoints: [ep], binaries: [{ path: bin.otherCurl }] },
      watched: { endpoints: [{ ...ep, host: 'audit.example.test', enforcement: 'audit' }], binaries: [{ path: CURL }] },
      open: { endpoints: [{ ...ep, host: 'open.example.test' }], binaries: [] },
    },
  } as Policy;
  const { proxy, decisions } = await startProxy(t, policy);
  await within(30_000, (async () => {
    t.equal((await curl(proxy, `http://${API}:${port}/`)).status, 200);
    t.match(decisions.at(-1), { action: 'allow', policy: 'curl' });
    t.equal((await curl(proxy, `http://${API}:${port}/`, { exe: bin.otherCurl })).status, 200);
    t.match(decisions.at(-1), { action: 'allow', policy: 'other' });

    t.equal((await curl(proxy, `http://audit.example.test:${port}/`, { exe: bin.otherCurl })).status, 200, 'audit: allowed');
    t.match(decisions.at(-1), { action: 'audit', policy: 'watched', reason: /is not among the binaries of policy 'watched' \(audit only: allowed\)/ });
    t.equal((await curl(proxy, `http://audit.example.test:${port}/`, { exe: bin.otherCurl, tunnel: true })).status, 200);
    t.match(decisions.at(-1), { action: 'audit', layer: 'L4' });

    t.equal((await forwardRequest(proxy, `http://open.example.test:${port}/`)).status, 200, 'an empty list restricts nothing');
  })());
});

t.test('binaries: a policy that names them, set while a rest tunnel is open, decides its next request', async (t) => {
  const server = await startHttp(t);
  const port = portOf(server);
  const ep = { host: API, port, allowed_ips: ['127.0.0.1/32'], protocol: 'rest', access: 'full' };
  const open = { version: 1, network_policies: { api: { endpoints: [ep] } } } as Policy;
  // Rooted at tap's runner: this process is one of its descendants, and the client here.
  const { proxy, decisions } = await startProxy(t, open, { callerRoot: process.ppid });
  await within(10_000, (async () => {
    const tun = await connectVia(t, proxy, `${API}:${port}`);
    t.equal(tun.status, 200);
    tun.sock.write(`GET /one HTTP/1.1\r\nHost: ${API}\r\n\r\n`);
    t.equal((await tun.bytes.response()).status, 200, 'before: any process');

    proxy.setPolicy({ version: 1, network_policies: { api: { endpoints: [ep], binaries: [{ path: '/nowhere/agent' }] } } } as Policy, 2);
    tun.sock.write(`GET /two HTTP/1.1\r\nHost: ${API}\r\n\r\n`);
    const r = await tun.bytes.response();
    t.equal(r.status, 403, 'after: the caller is looked up and refused');
    t.match(JSON.parse(r.body), { binary: NODE, policy: 'api', method: 'GET', path: '/two' });
    await tun.bytes.closed();

    proxy.setPolicy({ version: 1, network_policies: { api: { endpoints: [ep], binaries: [{ path: NODE }] } } } as Policy, 3);
    const again = await connectVia(t, proxy, `${API}:${port}`);
    t.equal(again.status, 200);
    again.sock.write(`GET /three HTTP/1.1\r\nHost: ${API}\r\n\r\n`);
    t.equal((await again.bytes.response()).status, 200, 'listed: allowed, each request at L7');
    t.match(decisions.at(-1), { action: 'allow', layer: 'L7', path: '/three', binary: NODE });
  })());
});

t.test('binaries: a process outside the sandbox tree is unidentified and refused', async (t) => {
  const server = await startHttp(t);
  const port = portOf(server);
  const sleeper = spawn('/bin/sleep', ['60'], { stdio: 'ignore' });
  t.teardown(() => {
    sleeper.kill('SIGKILL');
  });
  await once(sleeper, 'spawn');
  const { proxy } = await startProxy(t, restricted(port, [CURL]), { callerRoot: sleeper.pid! });
  await within(10_000, (async () => {
    const r = await curl(proxy, `http://${API}:${port}/`);
    t.equal(r.status, 403, 'curl is not a descendant of the root');
    t.match(JSON.parse(r.body), { reason: /^unidentified process \(no process of the sandbox's own holds the connection\)/ });
  })());
});

import t from 'tap';
import { containerName, dockerConnection, gatewayTag, ownContainerId, PathMap } from '../../src/drivers/docker.js';
import { DENIED_SYSCALLS, seccompProfile } from '../../src/drivers/docker-seccomp.js';
import { supervisorArgv } from '../../src/bundle/manifest.js';

t.test('--docker-host forms', async (t) => {
  t.same(dockerConnection('unix:///var/run/docker.sock'), { socketPath: '/var/run/docker.sock' });
  t.same(dockerConnection('/run/podman/podman.sock'), { socketPath: '/run/podman/podman.sock' });
  t.same(dockerConnection('tcp://10.0.0.5:2375'), { host: '10.0.0.5', port: 2375, protocol: 'http' });
  t.same(dockerConnection('https://docker.internal'), { host: 'docker.internal', port: 2376, protocol: 'https' });
  t.throws(() => dockerConnection('ssh://host'), /expected unix:\/\/, tcp:\/\/ or http/);
});

t.test('names and owners', async (t) => {
  const tag = gatewayTag('/var/lib/openshell');
  t.match(tag, /^[0-9a-f]{12}$/);
  t.equal(gatewayTag('/var/lib/openshell/'), tag, 'the same dir, however spelled');
  t.not(gatewayTag('/tmp/other'), tag);
  const name = containerName(tag, 'swift-otter');
  t.match(name, /^openshell-[0-9a-f]{8}-swift-otter$/);
  t.match(name, /^[a-zA-Z0-9][a-zA-Z0-9_.-]+$/, "within Docker's container name rule");
});

t.test('a gateway in a container finds its id from the /etc/hostname mount (Docker and Podman)', async (t) => {
  const id = 'a'.repeat(64);
  const docker = `612 598 254:0 /var/lib/docker/containers/${id}/hostname /etc/hostname rw,relatime - ext4 /dev/vda rw\n`;
  const podman = `700 690 0:45 /containers/storage/overlay-containers/${id}/userdata/hostname /etc/hostname rw - tmpfs tmpfs rw\n`;
  const host = '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n';
  t.equal(ownContainerId(host + docker), id);
  t.equal(ownContainerId(podman), id);
  t.equal(ownContainerId(host), null, 'on the engine host');
});

t.test('paths as the engine sees them', async (t) => {
  const onHost = new PathMap(null);
  t.equal(onHost.toEngine('/tmp/x/../y'), '/tmp/y');
  t.ok(onHost.covers('/anything'));
  const inContainer = new PathMap([
    { source: '/var/lib/docker/volumes/p_state/_data', destination: '/var/lib/openshell' },
    { source: '/srv/run', destination: '/var/lib/openshell/run' },
  ]);
  t.equal(inContainer.toEngine('/var/lib/openshell/docker/sbx_1'), '/var/lib/docker/volumes/p_state/_data/docker/sbx_1');
  t.equal(inContainer.toEngine('/var/lib/openshell/run'), '/srv/run', 'the longest mount wins');
  t.equal(inContainer.toEngine('/var/lib/openshell'), '/var/lib/docker/volumes/p_state/_data');
  t.notOk(inContainer.covers('/var/lib/openshellx'), 'a prefix of a name is not a parent');
  t.notOk(inContainer.covers('/app/dist/bundle'));
  t.throws(() => inContainer.toEngine('/app/dist/bundle'), /on no mount of the gateway's container/);
});

t.test('the seccomp profile allows what bwrap needs and denies the rest', async (t) => {
  const profile = JSON.parse(seccompProfile()) as { defaultAction: string; syscalls: Array<{ names: string[]; action: string; errnoRet: number }> };
  t.equal(profile.defaultAction, 'SCMP_ACT_ALLOW');
  const denied = profile.syscalls.flatMap((s) => s.names);
  for (const needed of ['pivot_root', 'mount', 'umount2', 'unshare', 'setns', 'clone', 'clone3', 'chroot']) t.notOk(denied.includes(needed), `${needed} allowed`);
  for (const bad of ['keyctl', 'bpf', 'userfaultfd', 'open_by_handle_at', 'kexec_load', 'init_module']) t.ok(denied.includes(bad), `${bad} denied`);
  t.equal(denied.length, DENIED_SYSCALLS.length);
  t.match(profile.syscalls[0], { action: 'SCMP_ACT_ERRNO', errnoRet: 1 });
});

t.test('the bundle entrypoint runs node through the bundled loader', async (t) => {
  const manifest = { loader: 'lib/ld-linux-x86-64.so.2', libDir: 'lib', node: 'bin/node', entry: 'supervisor/main.mjs', tools: {} };
  t.same(supervisorArgv(manifest, '/opt/openshell', ['--single-threaded-gc'], ['sleep', 'infinity']), [
    '/opt/openshell/lib/ld-linux-x86-64.so.2',
    '--library-path',
    '/opt/openshell/lib',
    '/opt/openshell/bin/node',
    '--single-threaded-gc',
    '/opt/openshell/supervisor/main.mjs',
    '--',
    'sleep',
    'infinity',
  ]);
});

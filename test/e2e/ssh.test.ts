import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import t from 'tap';
import { packageRoot } from '../../src/paths.js';
import { api, startGateway, tempDir, waitForPhase } from '../helpers/gateway.js';

const run = promisify(execFile);
const cli = join(packageRoot(), 'bin', 'openshell.js');

t.test('OpenSSH interop: ssh -F <(openshell sandbox ssh-config NAME) NAME echo hi', async (t) => {
  const gw = await startGateway(t);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'sshbox' });
  await waitForPhase(gw.app, 'sshbox', 'Ready');
  const { stdout: config } = await run(process.execPath, [cli, 'sandbox', 'ssh-config', 'sshbox', '--gateway', gw.url]);
  t.match(config, /Host sshbox/);
  t.match(config, /ServerAliveInterval 15/);
  t.match(config, /ServerAliveCountMax 3/);
  const file = join(tempDir(t), 'ssh_config');
  writeFileSync(file, config);
  const hi = await run('ssh', ['-F', file, 'sshbox', 'echo hi'], { timeout: 30_000 });
  t.equal(hi.stdout, 'hi\n');
  const failing = await run('ssh', ['-F', file, 'sshbox', 'exit 3'], { timeout: 30_000 }).catch((e: { code: number }) => e);
  t.equal((failing as { code: number }).code, 3, 'exit status carried back');
  // A few sequential sessions reuse nothing and still work.
  for (let i = 0; i < 3; i++) {
    const r = await run('ssh', ['-F', file, 'sshbox', `echo ${i}`], { timeout: 30_000 });
    t.equal(r.stdout, `${i}\n`);
  }
});

import { join } from 'node:path';
import t from 'tap';
import { ConfigError, loadConfig } from '../../src/config.js';

t.test('defaults: process driver, state under XDG_STATE_HOME, SQLite there, supervisor socket on', async (t) => {
  const c = loadConfig([], { XDG_STATE_HOME: '/var/state' });
  t.equal(c.driver, 'process');
  t.equal(c.stateDir, join('/var/state', 'openshell'));
  t.equal(c.db, `sqlite:${join('/var/state', 'openshell', 'openshell.db')}`);
  t.equal(c.port, 8080);
  t.equal(c.supervisorSocket, true);
  t.equal(c.execBufferLimitBytes, 16 * 1024 * 1024);
  t.equal(c.sandboxEndpoint, '');
});

t.test('flags win over env; every flag has its env var', async (t) => {
  const env = { OPENSHELL_PORT: '9000', OPENSHELL_SUPERVISOR_SOCKET: 'false', OPENSHELL_EXEC_BUFFER_LIMIT_BYTES: '2048', OPENSHELL_STATE_DIR: '/tmp/s' };
  const fromEnv = loadConfig([], env);
  t.equal(fromEnv.port, 9000);
  t.equal(fromEnv.supervisorSocket, false);
  t.equal(fromEnv.execBufferLimitBytes, 2048);
  const flags = loadConfig(['--port', '9001', '--supervisor-socket', '1', '--exec-buffer-limit-bytes', '4096'], env);
  t.equal(flags.port, 9001);
  t.equal(flags.supervisorSocket, true);
  t.equal(flags.execBufferLimitBytes, 4096);
});

t.test('bad values name the flag and its env var', async (t) => {
  const bad = (argv: string[], pattern: RegExp) => t.throws(() => loadConfig(argv, { OPENSHELL_STATE_DIR: '/tmp/s' }), pattern);
  bad(['--port', 'eighty'], /--port \(OPENSHELL_PORT\): expected a whole number/);
  bad(['--supervisor-socket', 'maybe'], /--supervisor-socket \(OPENSHELL_SUPERVISOR_SOCKET\): expected true or false/);
  bad(['--exec-buffer-limit-bytes', '10'], /--exec-buffer-limit-bytes \(OPENSHELL_EXEC_BUFFER_LIMIT_BYTES\)/);
  bad(['--driver', 'podman'], /--driver \(OPENSHELL_DRIVER\)/);
  bad(['--keepalive-interval-ms', '5000', '--keepalive-timeout-ms', '4000'], /--keepalive-timeout-ms must be greater/);
  bad(['--tls-cert', '/x.pem'], /--tls-cert and --tls-key go together/);
  t.throws(() => loadConfig(['--no-such-flag', 'x'], {}), /no-such-flag/);
  t.ok(new ConfigError('x') instanceof Error);
});

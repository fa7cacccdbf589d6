/**
 * Child process for bench/egress.ts, so client, targets and proxy do not
 * share one event loop. `servers`: loopback HTTP (bulk + small) and
 * WebSocket echo targets. `proxy <policy-json> [sandbox-log <file>]`: our
 * egress proxy, with a silent logger or the supervisor's: a JSON line per
 * decision appended to `file`, as a sandbox's supervisor appends to the log
 * file the process driver gives it. Reports its ports over IPC, runs until
 * killed.
 */
import http from 'node:http';
import { openSync, writeSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { once } from 'node:events';
import { WebSocketServer } from 'ws';
import { silentLogger, type Logger } from '../src/log.js';
import { createSupervisorLogger, LogRing } from '../src/supervisor/log.js';
import { logMessageBytes } from '../src/supervisor/control-client.js';
import { startEgressProxy, type Policy } from '../src/egress/index.js';
import { leanAccept } from '../src/egress/accept.js';

const CHUNK = Buffer.alloc(1 << 20, 0x62);

async function servers(): Promise<void> {
  const server = http.createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
    const m = /^\/big\/(\d+)$/.exec(req.url ?? '');
    if (!m) {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 2 });
      res.end('ok');
      return;
    }
    let left = Number(m[1]);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': left });
    const pump = (): void => {
      while (left > 0) {
        const n = Math.min(left, CHUNK.length);
        left -= n;
        const ok = res.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n));
        if (!ok) {
          res.once('drain', pump);
          return;
        }
      }
      res.end();
    };
    pump();
  });
  server.on('connection', (s) => s.setNoDelay(true));
  const wss = new WebSocketServer({ server, perMessageDeflate: false });
  wss.on('connection', (ws) => ws.on('message', (d, bin) => ws.send(d, { binary: bin })));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  // The target is shared by every peer: keep its GC pauses (one new socket per
  // request) out of whichever peer happens to be measured (src/egress/accept.ts).
  leanAccept(server);
  process.send!({ httpPort: (server.address() as AddressInfo).port });
}

/**
 * The logger a sandbox's proxy has: the supervisor's, lines appended to a
 * file (as the process driver's log file) and the gateway's share batched
 * every 200 ms like `Supervisor.forwardLog`, serialised as the control
 * session would and dropped (there is no gateway here). One ring: the
 * bench's peers allow everything, so there are no warnings to hold apart.
 */
function sandboxLogger(file: string): Logger {
  const fd = openSync(file, 'a', 0o600);
  const pending = new LogRing(2000);
  let timer: NodeJS.Timeout | undefined;
  const sink = (bytes: Buffer, start: number, end: number): void => {
    pending.pushBytes(bytes, start, end);
    timer ??= setTimeout(() => {
      timer = undefined;
      // What ControlClient.sendLogLines puts on the wire.
      logMessageBytes([pending]);
      pending.clear();
    }, 200).unref();
  };
  return createSupervisorLogger({ bindings: { sandboxId: 'bench' }, sink, write: (bytes) => writeSync(fd, bytes) }).child({ component: 'egress' });
}

async function proxy(policyJson: string, logMode: string | undefined, logFile: string | undefined): Promise<void> {
  const log = logMode === 'sandbox-log' && logFile ? sandboxLogger(logFile) : silentLogger;
  const p = await startEgressProxy({ policy: JSON.parse(policyJson) as Policy, log });
  // Tests ask for a full GC (run with --expose-gc) to check what the proxy does after one.
  process.on('message', (m) => {
    if (m === 'gc' && typeof globalThis.gc === 'function') {
      globalThis.gc();
      process.send!('gc');
    }
  });
  process.send!({ port: p.port });
}

const role = process.argv[2];
process.on('disconnect', () => process.exit(0));
if (role === 'servers') await servers();
else if (role === 'proxy') await proxy(process.argv[3] ?? 'null', process.argv[4], process.argv[5]);
else throw new Error(`unknown role ${role}`);

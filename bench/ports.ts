import { once } from 'node:events';
import net from 'node:net';

/** A TCP port free on 127.0.0.1 right now (bound, then released): for children told a port, and for "nobody listens here". */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

// A TCP fault proxy for tests and the dead-relay benchmark (tests import it via test/helpers/tcp-proxy.ts).
import net from 'node:net';
import { once } from 'node:events';

/**
 * A TCP fault proxy for tests: forwards loopback connections to a target and
 * can silently drop them the way a NAT or conntrack eviction does (no FIN, no
 * RST), reset them, or hold new ones.
 */
export interface TcpProxy {
  /** The port the proxy listens on (127.0.0.1). */
  readonly port: number;
  /** Live pairs: accepted connections not yet closed, black-holed ones included. */
  readonly connections: number;
  /**
   * From now on, every established pair stops forwarding in both directions
   * and is held open forever (no FIN, no RST, nothing read or written); new
   * connections are accepted and black-holed too, until `restore()`.
   */
  blackhole(): void;
  /** New connections forward again; pairs black-holed before stay dead. */
  restore(): void;
  /** Destroys every pair with an RST on both sides. */
  resetAll(): void;
  /**
   * While true, new connections are accepted but held: nothing is read and no
   * upstream connection is made. Setting it back to false releases them.
   */
  pauseNew(paused: boolean): void;
  /** Destroys every socket and stops listening. Idempotent. */
  close(): Promise<void>;
}

type PairState = 'held' | 'connecting' | 'forwarding' | 'blackholed' | 'closed';

interface Pair {
  state: PairState;
  client: net.Socket;
  upstream: net.Socket | null;
}

export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  const pairs = new Set<Pair>();
  let blackholed = false;
  let paused = false;
  let closing: Promise<void> | null = null;

  const finish = (pair: Pair): void => {
    if (pair.state === 'closed') return;
    pair.state = 'closed';
    pairs.delete(pair);
    pair.client.destroy();
    pair.upstream?.destroy();
  };

  const holdDead = (pair: Pair): void => {
    pair.state = 'blackholed';
    // Not reading means the kernel never hands us the peer's FIN either, so
    // nothing of this pair ever reaches the other side again.
    pair.client.pause();
    pair.upstream?.pause();
  };

  const forward = (pair: Pair, from: net.Socket, to: net.Socket): void => {
    from.on('data', (chunk: Buffer) => {
      if (pair.state !== 'forwarding') return;
      if (!to.write(chunk)) from.pause();
    });
    to.on('drain', () => {
      if (pair.state === 'forwarding') from.resume();
    });
    from.on('end', () => {
      if (pair.state === 'forwarding') to.end();
    });
  };

  const connectUpstream = (pair: Pair): void => {
    pair.state = 'connecting';
    const upstream = net.connect({ host: target.host, port: target.port, allowHalfOpen: true });
    pair.upstream = upstream;
    upstream.setNoDelay(true);
    upstream.on('error', () => {
      if (pair.state === 'connecting' || pair.state === 'forwarding') finish(pair);
    });
    upstream.on('close', () => {
      if (pair.state === 'connecting' || pair.state === 'forwarding') finish(pair);
    });
    upstream.once('connect', () => {
      if (pair.state !== 'connecting') return;
      if (blackholed) {
        holdDead(pair);
        return;
      }
      pair.state = 'forwarding';
      forward(pair, pair.client, upstream);
      forward(pair, upstream, pair.client);
      pair.client.resume();
    });
  };

  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (client) => {
    client.setNoDelay(true);
    const pair: Pair = { state: 'held', client, upstream: null };
    pairs.add(pair);
    client.on('error', () => {
      if (pair.state !== 'blackholed') finish(pair);
    });
    client.on('close', () => {
      if (pair.state !== 'blackholed') finish(pair);
      else pairs.delete(pair);
    });
    if (blackholed) holdDead(pair);
    else if (!paused) connectUpstream(pair);
  });

  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;

  return {
    port,
    get connections() {
      return pairs.size;
    },
    blackhole() {
      blackholed = true;
      for (const pair of pairs) {
        if (pair.state !== 'closed') holdDead(pair);
      }
    },
    restore() {
      blackholed = false;
      if (!paused) {
        for (const pair of pairs) if (pair.state === 'held') connectUpstream(pair);
      }
    },
    resetAll() {
      for (const pair of [...pairs]) {
        pair.state = 'closed';
        pairs.delete(pair);
        for (const socket of [pair.client, pair.upstream]) {
          if (!socket || socket.destroyed) continue;
          // A socket already shut down for writing cannot be reset (uv_tcp_close_reset answers
          // EINVAL) and Node 20 then never closes its handle: exit spins in handle cleanup.
          if (socket.writableEnded) {
            socket.destroy();
            continue;
          }
          try {
            socket.resetAndDestroy();
          } catch {
            socket.destroy();
          }
        }
      }
    },
    pauseNew(value: boolean) {
      paused = value;
      if (!paused && !blackholed) {
        for (const pair of pairs) if (pair.state === 'held') connectUpstream(pair);
      }
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const pair of [...pairs]) {
          pair.state = 'closed';
          pairs.delete(pair);
          pair.client.destroy();
          pair.upstream?.destroy();
        }
      });
      return closing;
    },
  };
}

/**
 * Accepting connections without a fresh hidden class per socket.
 *
 * Node 20's `net.Socket` constructor copies its options (`{ ...options }`)
 * and then adds `emitClose`, `autoDestroy` and `decodeStrings` to the copy.
 * V8 11 gives each key added to such a copy a new map (the copy's map is
 * detached from the transition tree, so the transition is never cached):
 * three maps and descriptor arrays in old space for every socket, plus young
 * objects that then survive scavenges. On a proxy that opens thousands of
 * short connections, that made every scavenge copy about 1 MB (2–4 ms
 * pauses), filled old space every few thousand connections, and each full GC
 * threw away the optimised code built on those maps: the p99 of a new
 * connection was 2–3 times squid's.
 *
 * Sockets we build ourselves pass those three keys already set (with the
 * values the constructor sets), so it only overwrites them. Accepted sockets are built inside
 * net.Server, so `leanAccept` replaces the listening handle's `onconnection`
 * with one that does what Node's does, with the complete options. It relies
 * on net.Server internals (`_handle`, `_connections`) and checks for them:
 * where they are missing it leaves Node's own path in place and says so.
 */
import net from 'node:net';
import diagnostics from 'node:diagnostics_channel';

type OnConnection = (this: object, err: number, clientHandle: object | undefined) => void;

/** The net.Server fields Node's own accept callback reads (Node 20). */
interface ServerInternals {
  _handle?: { onconnection?: OnConnection } | null;
  _connections?: number;
  maxConnections?: number;
  allowHalfOpen?: boolean;
  pauseOnConnect?: boolean;
  highWaterMark?: number;
  noDelay?: boolean;
  keepAlive?: boolean;
  keepAliveInitialDelay?: number;
}

interface SocketInternals {
  server: net.Server | null;
  _server: net.Server | null;
}

const serverSocketChannel = diagnostics.channel('net.server.socket');

/**
 * Replace `server`'s accept callback (once it is listening) with one that
 * builds each socket from the complete options, taken from the server as
 * Node's own callback takes them. `hooks.onread`, called for each socket just
 * before its 'connection' event: its net `onread` (reads into the caller's
 * buffer). Returns false, changing nothing, when this Node's net.Server does
 * not look as expected.
 */
export function leanAccept(server: net.Server, hooks: { onread?: () => net.OnReadOpts } = {}): boolean {
  const { onread } = hooks;
  const internals = server as unknown as ServerInternals;
  const handle = internals._handle;
  const original = handle?.onconnection;
  const { allowHalfOpen, pauseOnConnect, highWaterMark, noDelay, keepAlive, keepAliveInitialDelay } = internals;
  if (
    !handle ||
    typeof original !== 'function' ||
    typeof internals._connections !== 'number' ||
    typeof allowHalfOpen !== 'boolean' ||
    typeof pauseOnConnect !== 'boolean' ||
    (highWaterMark !== undefined && typeof highWaterMark !== 'number')
  ) {
    return false;
  }
  handle.onconnection = function (this: object, err: number, clientHandle: object | undefined): void {
    // Errors and the maxConnections drop stay with Node's own code.
    if (err || !clientHandle || (internals.maxConnections && (internals._connections ?? 0) >= internals.maxConnections)) {
      original.call(this, err, clientHandle);
      return;
    }
    // Written out, not spread: a literal's hidden class is shared, a spread copy's is not.
    const socket = new net.Socket({
      handle: clientHandle,
      allowHalfOpen,
      pauseOnCreate: pauseOnConnect,
      readable: true,
      writable: true,
      readableHighWaterMark: highWaterMark,
      writableHighWaterMark: highWaterMark,
      emitClose: false,
      autoDestroy: true,
      decodeStrings: false,
      onread: onread ? onread() : undefined,
    } as net.SocketConstructorOpts);
    if (noDelay) socket.setNoDelay(true);
    if (keepAlive) socket.setKeepAlive(true, (keepAliveInitialDelay ?? 0) * 1000); // the server keeps seconds
    internals._connections = (internals._connections ?? 0) + 1;
    const si = socket as unknown as SocketInternals;
    si.server = server;
    si._server = server;
    server.emit('connection', socket);
    if (serverSocketChannel.hasSubscribers) serverSocketChannel.publish({ socket });
  };
  return true;
}

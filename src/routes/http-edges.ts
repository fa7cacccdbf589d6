import type { Socket } from 'node:net';
import type { FastifyInstance } from 'fastify';

/** A client still sending a body we answered early is read (and dropped) this long after its last bytes… */
const LINGER_IDLE_MS = 2000;
/** …and no longer than this in all. */
const LINGER_MAX_MS = 10_000;

/**
 * HTTP/1.1 behaviour at the edges of a request, for every route:
 *
 * - An empty body with `Content-Type: application/json` is no body on a
 *   route that takes none (many clients send the header on every call); a
 *   route with a body schema still answers 400 `body: empty JSON body`.
 * - An answer given before the request body was read (413, or any answer
 *   with `Connection: close`) lingers: the gateway half-closes and reads what
 *   the client is still writing, instead of closing at once. Closing a socket
 *   with unread bytes sends a reset, and a client still writing (Node's
 *   fetch) then gets EPIPE and never sees the answer.
 * - A refused WebSocket upgrade answers `Connection: close`: the socket
 *   was taken from the HTTP parser for the upgrade and is closed after the
 *   answer, so a keep-alive client must not send its next request on it.
 */
export function applyHttpEdges(app: FastifyInstance): void {
  const json = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    // Only where the route takes no body: elsewhere the default parser's 400 says the body is empty.
    if (body === '' && request.routeOptions.schema?.body === undefined) return done(null, undefined);
    json(request, body as string, done);
  });

  app.addHook('onSend', async (request, reply) => {
    if (request.ws) {
      if (reply.statusCode !== 101) reply.header('connection', 'close');
      return;
    }
    const raw = request.raw;
    if (raw.httpVersionMajor !== 1 || raw.complete || String(reply.getHeader('connection')).toLowerCase() !== 'close') return;
    lingerBeforeClose(raw.socket);
  });
}

/**
 * Node closes a `Connection: close` socket with `destroySoon()` once the
 * answer is written; here that becomes: end our side (FIN after the answer),
 * keep reading until the client ends its side or goes quiet, then destroy.
 * The HTTP parser drops the unread body as it arrives.
 */
function lingerBeforeClose(socket: Socket): void {
  socket.destroySoon = function (this: Socket) {
    this.end();
    const timer = setTimeout(() => this.destroy(), LINGER_MAX_MS).unref();
    this.setTimeout(LINGER_IDLE_MS, () => this.destroy());
    this.once('close', () => clearTimeout(timer));
  };
}

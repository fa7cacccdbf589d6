import t from 'tap';
import { headerLines, parseRequestHead, parseResponseHead, responseFraming, type RequestHead, type ResponseHead } from '../../src/egress/http.js';

const head = (s: string): Buffer => Buffer.from(`${s}\r\n\r\n`, 'latin1');

function req(s: string): RequestHead {
  const r = parseRequestHead(head(s));
  if (typeof r === 'string') throw new Error(`rejected: ${r}`);
  return r;
}

function res(s: string): ResponseHead {
  const r = parseResponseHead(head(s));
  if (typeof r === 'string') throw new Error(`rejected: ${r}`);
  return r;
}

t.test('malformed request heads are refused with the reason', async (t) => {
  const cases: [string, string][] = [
    ['GET / HTTP/1.1\r\nHost: a\nX: b', 'bare CR or LF in head'],
    ['GET / HTTP/1.1\r\nHost: a\rX: b', 'bare CR or LF in head'],
    ['GET /\n HTTP/1.1', 'bare CR or LF in head'],
    ['GET / HTTP/1.1\r\nHo st: a', 'invalid header name'],
    ['GET / HTTP/1.1\r\nHost: a\0b', 'invalid header value'],
    ['GET / HTTP/1.1\r\n: a', 'malformed header line'],
    ['GET / HTTP/1.1\r\nno colon here', 'malformed header line'],
    ['GET / HTTP/1.1\r\nHost: a\r\n\r\nX: b', 'malformed header line'],
    ['GET / HTTP/2.0', 'malformed request line'],
    ['GET  / HTTP/1.1', 'malformed request line'],
    ['POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked', 'both Transfer-Encoding and Content-Length'],
    ['POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip', 'unsupported Transfer-Encoding'],
    ['POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4', 'invalid Content-Length'],
    ['POST / HTTP/1.1\r\nContent-Length: -1', 'invalid Content-Length'],
  ];
  for (const [text, reason] of cases) t.equal(parseRequestHead(head(text)), reason, JSON.stringify(text));
});

t.test('request framing, keep-alive and upgrade come from the fields, names in any case', async (t) => {
  const r = req('POST /p?q=1 HTTP/1.1\r\nhost: a\r\nCONTENT-LENGTH: 5\r\nX-Other: y');
  t.same(r.framing, { kind: 'length', length: 5 });
  t.equal(r.method, 'POST');
  t.equal(r.target, '/p?q=1');
  t.same(headerLines(r), ['host: a', 'CONTENT-LENGTH: 5', 'X-Other: y'], 'lines as sent');
  t.ok(r.keepAlive);
  t.notOk(r.upgrade);
  t.same(req('POST / HTTP/1.1\r\nContent-Length: 7\r\nContent-Length: 7').framing, { kind: 'length', length: 7 }, 'repeated equal lengths');
  t.same(req('POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked').framing, { kind: 'chunked' });
  t.same(req('GET / HTTP/1.1').framing, { kind: 'none' }, 'no fields at all');
  t.notOk(req('GET / HTTP/1.1\r\nConnection: Close').keepAlive);
  t.notOk(req('GET / HTTP/1.1\r\nConnection: foo,\tclose ,bar').keepAlive, 'tokens with tabs and spaces around');
  t.ok(req('GET / HTTP/1.1\r\nConnection: closed, enclose').keepAlive, 'close only as a whole token');
  t.ok(req('GET / HTTP/1.1\r\nX-Connection: close\r\nConnectionX: close').keepAlive, 'other names that contain it');
  t.notOk(req('GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close').keepAlive, 'any of several Connection fields');
  t.notOk(req('GET / HTTP/1.0').keepAlive, 'HTTP/1.0 closes by default');
  t.ok(req('GET / HTTP/1.0\r\nConnection: keep-alive').keepAlive);
  t.ok(req('GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket').upgrade);
  t.notOk(req('GET / HTTP/1.1\r\nUpgrade: websocket').upgrade, 'Upgrade without Connection: upgrade');
  t.notOk(req('GET / HTTP/1.1\r\nConnection: upgrade').upgrade, 'Connection: upgrade without Upgrade');
});

t.test('a head of thousands of field lines parses', async (t) => {
  let s = 'GET / HTTP/1.1';
  for (let i = 0; i < 6000; i++) s += `\r\nX-Field-${i}: value ${i}`;
  t.equal(headerLines(req(s)).length, 6000);
});

t.test('response heads: status, framing, keep-alive, and refusals', async (t) => {
  const r = res('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive');
  t.equal(r.status, 200);
  t.ok(r.keepAlive);
  t.same(responseFraming('GET', r), { kind: 'length', length: 2 });
  t.same(responseFraming('HEAD', r), { kind: 'none' }, 'HEAD has no body');
  t.same(responseFraming('GET', res('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked')), { kind: 'chunked' });
  t.same(responseFraming('GET', res('HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip')), { kind: 'close' });
  t.same(responseFraming('GET', res('HTTP/1.1 200 OK')), { kind: 'close' }, 'no length: until close');
  t.same(responseFraming('GET', res('HTTP/1.1 204 No Content')), { kind: 'none' });
  t.same(responseFraming('GET', res('HTTP/1.1 200 OK\r\nContent-Length: 0')), { kind: 'none' });
  t.notOk(res('HTTP/1.1 200 OK\r\nConnection: close').keepAlive);
  t.notOk(res('HTTP/1.0 200 OK').keepAlive);
  t.equal(res('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade').status, 101);
  t.equal(responseFraming('GET', res('HTTP/1.1 200 OK\r\nContent-Length: x')), 'invalid Content-Length');
  t.equal(parseResponseHead(head('HTTP/1.1 200 OK\r\nX: a\nY: b')), 'bare CR or LF in head');
  t.equal(parseResponseHead(head('HTTP/1.1 2000 OK')), 'malformed status line');
  t.equal(parseResponseHead(head('HTTP/1.1 200 OK\r\nBad Name: v')), 'invalid header name');
});

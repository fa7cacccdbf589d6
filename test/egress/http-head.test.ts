import t from 'tap';
import { findHeadEnd, headerLines, hostHeader, parseRequestHead, parseResponseHead, responseFraming, type RequestHead, type ResponseHead } from '../../src/egress/http.js';
import { seededRandom } from '../helpers/random.js';

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
    ['GET / HTTP/1.2', 'malformed request line'],
    ['GET  / HTTP/1.1', 'malformed request line'],
    ['POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked', 'both Transfer-Encoding and Content-Length'],
    ['POST / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked', 'both Transfer-Encoding and Content-Length'],
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
  t.equal(parseResponseHead(head('HTTP/1.2 200 OK')), 'malformed status line');
  t.equal(parseResponseHead(head('HTTP/1.1 200 OK\r\nBad Name: v')), 'invalid header name');
});

/*
 * Differential check of the byte-level head scanner against a plain oracle:
 * split the field section into lines, match each against the RFC 9112 field
 * grammar, decode by lower-cased name. Heads are realistic ones mutated at
 * random (seeded) with the bytes that matter: CR, LF, NUL, OWS, ':', ',',
 * non-token and high bytes, extra fields.
 */
const FIELD = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n\0]*$/;
const NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function oracleFields(
  section: string,
): { cl: string[] | null; te: string[] | null; upgrade: boolean; other: string | null; conn: Set<string>; hosts: string[] } | string {
  const out = {
    cl: null as string[] | null,
    te: null as string[] | null,
    upgrade: false,
    other: null as string | null,
    conn: new Set<string>(),
    hosts: [] as string[],
  };
  if (section === '') return out;
  const lines = section.split('\r\n');
  for (const line of lines) {
    if (FIELD.test(line)) continue;
    if (line.includes('\n') || line.includes('\r')) return 'bare CR or LF in head';
    const colon = line.indexOf(':');
    if (colon <= 0) return 'malformed header line';
    if (!NAME.test(line.slice(0, colon))) return 'invalid header name';
    if (line.includes('\0')) return 'invalid header value';
    return 'malformed header line';
  }
  for (const line of lines) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).toLowerCase();
    const value = line.slice(colon + 1);
    if (name === 'content-length') (out.cl ??= []).push(value.trim());
    if (name === 'transfer-encoding') (out.te ??= []).push(value.trim());
    if (name === 'upgrade') {
      out.upgrade = true;
      for (const p of value.split(',').map((v) => v.replace(/^[ \t]+|[ \t]+$/g, ''))) {
        if (p !== '' && p.split('/')[0]!.toLowerCase() !== 'websocket') out.other ??= p;
      }
    }
    if (name === 'host') out.hosts.push(value.replace(/^[ \t]+|[ \t]+$/g, ''));
    if (name === 'connection') for (const tok of value.split(',')) out.conn.add(tok.replace(/^[ \t]+|[ \t]+$/g, '').toLowerCase());
  }
  return out;
}

function startProblem(text: string, what: string): string {
  const eol = text.indexOf('\r\n');
  const line = eol < 0 ? text : text.slice(0, eol);
  return line.includes('\n') || line.includes('\r') ? 'bare CR or LF in head' : `malformed ${what} line`;
}

function oracleResponse(raw: Buffer): unknown {
  const text = raw.toString('latin1', 0, raw.length - 4);
  const m = /^HTTP\/1\.([01]) (\d{3})(?: [^\r\n]*)?(?:\r\n|$)/.exec(text);
  if (!m) return startProblem(text, 'status');
  const f = oracleFields(text.slice(m[0].length));
  if (typeof f === 'string') return f;
  return { status: Number(m[2]), te: f.te, cl: numbers(f.cl), keepAlive: m[1] === '1' ? !f.conn.has('close') : f.conn.has('keep-alive') };
}

/** RFC 9112 6: a request's body framing from its fields, or why it is refused. */
function oracleFraming(cl: string[] | null, te: string[] | null): unknown {
  if (te) {
    if (cl) return 'both Transfer-Encoding and Content-Length';
    const codings = te.join(',').split(',').map((c) => c.trim().toLowerCase()).filter(Boolean);
    return codings[codings.length - 1] === 'chunked' ? { kind: 'chunked' } : 'unsupported Transfer-Encoding';
  }
  if (!cl) return { kind: 'none' };
  const values = cl.join(',').split(',').map((v) => v.trim());
  if (!values.every((v) => /^\d{1,15}$/.test(v)) || new Set(values.map(Number)).size !== 1) return 'invalid Content-Length';
  const n = Number(values[0]);
  return n ? { kind: 'length', length: n } : { kind: 'none' };
}

function oracleRequest(raw: Buffer): unknown {
  const text = raw.toString('latin1', 0, raw.length - 4);
  const m = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([^\s]+) HTTP\/1\.([01])(?:\r\n|$)/.exec(text);
  if (!m) return startProblem(text, 'request');
  const f = oracleFields(text.slice(m[0].length));
  if (typeof f === 'string') return f;
  if (f.hosts.length > 1) return 'more than one Host header';
  const framing = oracleFraming(f.cl, f.te);
  if (typeof framing === 'string') return framing;
  const v11 = m[3] === '1';
  return {
    method: m[1],
    target: m[2],
    framing,
    keepAlive: v11 ? !f.conn.has('close') : f.conn.has('keep-alive'),
    upgrade: f.upgrade && f.conn.has('upgrade'),
    host: f.hosts[0] ?? null,
    other: f.other,
  };
}

/** Content-Length values compared by what they mean: plain digits as numbers (a single one is parsed as one already). */
function numbers(cl: string[] | number | null): unknown {
  if (cl === null) return null;
  return (typeof cl === 'number' ? [cl] : cl).map((v) => (typeof v === 'string' && /^\d{1,15}$/.test(v) ? Number(v) : v));
}

/** The parsers' results in the oracle's terms. */
function viewResponse(raw: Buffer): unknown {
  const r = parseResponseHead(raw);
  return typeof r === 'string' ? r : { status: r.status, te: r.transferEncoding, cl: numbers(r.contentLength), keepAlive: r.keepAlive };
}

function viewRequest(raw: Buffer): unknown {
  const r = parseRequestHead(raw);
  return typeof r === 'string'
    ? r
    : { method: r.method, target: r.target, framing: r.framing, keepAlive: r.keepAlive, upgrade: r.upgrade, host: hostHeader(r), other: r.upgradeOther };
}

t.test('the byte-level head scanner agrees with a line-by-line oracle on mutated heads', async (t) => {
  const rnd = seededRandom(0x9e3779b9);
  const bits = ['\r', '\n', '\0', ' ', '\t', '\v', '\f', '\xa0', '\x85', ':', ',', '\x7f', '\xff', '(', 'a', 'Z', '0', '\r\n', '\r\n ', '\r\nX-A: b', 'GET', 'get', 'CONNECT', 'HTTP/1.1', 'HTTP/1.2', 'HTTP/1.0', '2', ' /x?y#z',
    '\r\nContent-Length: 5', '\r\nContent-Length: 0', '\r\nContent-Length:  007 ', '\r\ncontent-length: 5, 5', '\r\nTransfer-Encoding: chunked', '\r\nConnection: close, Upgrade',
    '\r\nconnection:keep-alive', '\r\nUpgrade: websocket', ' close', ', keep-alive', 'HTTP/1.0', '\r\nHost: evil.test', '\r\nhost:\t', '\r\nHOST: a:1 \t', 'Host', '\r\nUpgrade: h2c', ', WebSocket/13', 'websocket', '/2'];
  const mutate = (s: string): string => {
    let out = s;
    for (let k = 1 + rnd(3); k > 0; k--) {
      const at = rnd(out.length + 1);
      const op = rnd(3);
      const bit = bits[rnd(bits.length)]!;
      if (op === 0) out = out.slice(0, at) + bit + out.slice(at);
      else if (op === 1) out = out.slice(0, at) + bit + out.slice(at + 1);
      else out = out.slice(0, at) + out.slice(at + 1 + rnd(3));
    }
    return out;
  };
  const responses = [
    'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nDate: Mon, 23 Nov 2026 00:00:00 GMT\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5',
    'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x',
    'HTTP/1.0 204 No Content',
    'HTTP/1.1 200\r\nTransfer-Encoding: gzip, chunked\r\nconnection: close',
  ];
  const requests = [
    'GET /small HTTP/1.1\r\nHost: 127.0.0.1',
    'POST /v1/chat HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: application/json\r\nContent-Length: 12\r\nConnection: keep-alive',
    'GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: k',
    'PUT /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive',
  ];
  let mismatches = 0;
  let accepted = 0;
  for (let i = 0; i < 20000; i++) {
    const rs = i % 2 === 0 ? responses[rnd(responses.length)]! : mutate(responses[rnd(responses.length)]!);
    const rq = i % 2 === 0 ? requests[rnd(requests.length)]! : mutate(requests[rnd(requests.length)]!);
    const rawRes = head(rs);
    const rawReq = head(rq);
    const wantRes = oracleResponse(rawRes);
    const wantReq = oracleRequest(rawReq);
    if (typeof wantRes !== 'string') accepted++;
    for (const [got, want, text] of [
      [viewResponse(rawRes), wantRes, rs],
      [viewRequest(rawReq), wantReq, rq],
    ] as const) {
      if (JSON.stringify(got) !== JSON.stringify(want) && mismatches++ < 5) t.fail(`differs on ${JSON.stringify(text)}`, { got, want });
    }
  }
  t.equal(mismatches, 0, 'no head parsed differently');
  t.ok(accepted > 2000, `mutated heads still accepted often enough to compare fields (${accepted})`);
});

t.test('the head-end scan finds the first CRLF CRLF exactly where indexOf does', async (t) => {
  const CRLFCRLF = Buffer.from('\r\n\r\n');
  const rnd = seededRandom(12345);
  const alphabet = [0x0d, 0x0a, 0x41, 0x0d, 0x0a, 0x20];
  let mismatches = 0;
  for (let k = 0; k < 100000; k++) {
    const len = rnd(k % 100 === 0 ? 3000 : 48);
    const b = Buffer.alloc(len);
    for (let i = 0; i < len; i++) b[i] = alphabet[rnd(alphabet.length)]!;
    const from = rnd(len + 2);
    if (findHeadEnd(b, from) !== b.indexOf(CRLFCRLF, from) && mismatches++ < 5) t.fail(`differs on ${JSON.stringify(b.toString('latin1'))} from ${from}`);
  }
  t.equal(mismatches, 0);
});

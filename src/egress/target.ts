/**
 * Request targets and authorities: `CONNECT host:port`, absolute URIs, and
 * what a request inside a tunnel says its host is.
 */
import { normalizeHost, type HostName } from './ip.js';
import { queryStart } from './policy.js';
import type { RequestHead } from './http.js';

export interface Target {
  host: HostName;
  key: string; // normalised host: DNS name or canonical IP text
  port: number;
}

function hostKey(h: HostName): string {
  return h.kind === 'ip' ? h.addr.text : h.name;
}

export function parseHostPort(authority: string, defaultPort: number | null): Target | string {
  let hostRaw: string;
  let portStr: string | null = null;
  if (authority.startsWith('[')) {
    const close = authority.indexOf(']');
    if (close < 0) return 'invalid host';
    hostRaw = authority.slice(0, close + 1);
    const rest = authority.slice(close + 1);
    if (rest.startsWith(':')) portStr = rest.slice(1);
    else if (rest !== '') return 'invalid authority';
  } else {
    const c = authority.indexOf(':');
    if (c >= 0) {
      if (authority.indexOf(':', c + 1) >= 0) return 'IPv6 address must be in brackets';
      hostRaw = authority.slice(0, c);
      portStr = authority.slice(c + 1);
    } else hostRaw = authority;
  }
  let port: number;
  if (portStr === null || portStr === '') {
    if (defaultPort === null) return 'missing port (CONNECT needs host:port)';
    port = defaultPort;
  } else {
    if (!/^\d{1,5}$/.test(portStr)) return 'invalid port';
    port = Number(portStr);
    if (port < 1 || port > 65535) return 'invalid port';
  }
  const host = hostRaw === '' ? null : normalizeHost(hostRaw);
  if (!host) return 'invalid host';
  return { host, key: hostKey(host), port };
}

export interface AbsoluteTarget extends Target {
  authority: string;
  path: string; // origin-form target sent upstream (path + query)
}

/** scheme "://" authority, then path and query (a fragment dropped). */
const ABSOLUTE_URI = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\/([^/?#]*)([^#]*)/;

/** An absolute URI's path and query as an origin-form target. */
function originForm(pathAndQuery: string): string {
  return pathAndQuery === '' ? '/' : pathAndQuery.startsWith('?') ? '/' + pathAndQuery : pathAndQuery;
}

export function parseAbsoluteTarget(target: string): AbsoluteTarget | string {
  const m = ABSOLUTE_URI.exec(target);
  if (!m) {
    return target.startsWith('/')
      ? 'origin-form request: this is a proxy; send an absolute URI (http://host/path) or CONNECT'
      : 'unsupported request target';
  }
  const scheme = m[1]!.toLowerCase();
  if (scheme === 'https' || scheme === 'wss') return `${scheme}:// absolute URIs are not supported: use CONNECT`;
  if (scheme !== 'http' && scheme !== 'ws') return `unsupported scheme '${scheme}'`;
  const authority = m[2]!;
  if (authority.includes('@')) return 'userinfo in the request URI is not allowed';
  const t = parseHostPort(authority, 80);
  if (typeof t === 'string') return t;
  const path = originForm(m[3]!);
  // Not `{ ...t, authority, path }`: a spread copy given more keys gets a new hidden class each time (accept.ts).
  return { host: t.host, key: t.key, port: t.port, authority, path };
}

export function stripQuery(target: string): string {
  const q = queryStart(target);
  return q < 0 ? target : target.slice(0, q);
}

/** The path of a request inside a tunnel: origin-form as it is, an absolute URI's path. */
export function tunnelPath(target: string): string {
  if (target.charCodeAt(0) === 0x2f) return target;
  const m = ABSOLUTE_URI.exec(target);
  return m ? originForm(m[3]!) : target;
}

/** The authority of an absolute-URI target; null for origin-form and anything else. */
function uriAuthority(target: string): string | null {
  if (target.charCodeAt(0) === 0x2f) return null;
  return ABSOLUTE_URI.exec(target)?.[2] ?? null;
}

function sameBytes(raw: Buffer, from: number, end: number, b: Buffer): boolean {
  if (end - from !== b.length) return false;
  for (let i = 0; i < b.length; i++) if (raw[from + i] !== b[i]) return false;
  return true;
}

/**
 * Whether the requests inside a tunnel name the tunnel's host. The policy
 * allowed `CONNECT host:port`, but an origin serves whichever host the
 * request itself names (an absolute URI's authority first, else the Host
 * field): on a shared front (a CDN, a virtual host) a request naming
 * another host would reach that host's site through the allowed one.
 * Hosts are compared normalised (case, a trailing dot, IP spellings); ports
 * are not compared, since they do not choose the host. A request without a
 * Host field (HTTP/1.0) names no other host. The last Host value found to
 * match is kept as bytes, so a tunnel's requests after the first are
 * checked without making text.
 */
export class TunnelHost {
  #ok: Buffer | null = null;

  constructor(
    private readonly key: string,
    private readonly port: number,
  ) {}

  /** null when `req` names the tunnel's host or none; otherwise why not (for the 403 and the decision line). */
  mismatch(req: RequestHead): string | null {
    const authority = uriAuthority(req.target);
    if (authority !== null) {
      const a = parseHostPort(authority, this.port);
      if (typeof a === 'string') return `the request URI's authority is not a valid host (${a})`;
      if (a.key !== this.key) return `the request URI names ${a.key}, not the tunnel's host ${this.key}`;
    }
    const from = req.hostFrom;
    if (from < 0) return null;
    const ok = this.#ok;
    if (ok !== null && sameBytes(req.raw, from, req.hostEnd, ok)) return null;
    const h = parseHostPort(req.raw.toString('latin1', from, req.hostEnd), this.port);
    if (typeof h === 'string') return `the Host header is not a valid host (${h})`;
    if (h.key !== this.key) return `the Host header names ${h.key}, not the tunnel's host ${this.key}`;
    this.#ok = Buffer.from(req.raw.subarray(from, req.hostEnd));
    return null;
  }
}

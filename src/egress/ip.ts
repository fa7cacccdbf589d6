/**
 * IP address parsing, CIDR matching and the internal-address table used by
 * the SSRF guard. IPv4 is a uint32 number, IPv6 a bigint; IPv4-mapped IPv6
 * addresses (`::ffff:a.b.c.d`) are turned into the IPv4 they carry so that
 * every check and every `allowed_ips` entry sees one spelling.
 */

export type IpAddr = { family: 4; v4: number; text: string } | { family: 6; v6: bigint; text: string };

/**
 * `addrs` with the two families alternating, starting with the first
 * address's family, each family in its own order (RFC 8305 4).
 */
export function interleaveFamilies(addrs: readonly IpAddr[]): IpAddr[] {
  const first = addrs[0]?.family;
  const same = addrs.filter((a) => a.family === first);
  const other = addrs.filter((a) => a.family !== first);
  const out: IpAddr[] = [];
  for (let i = 0; i < Math.max(same.length, other.length); i++) {
    if (i < same.length) out.push(same[i]!);
    if (i < other.length) out.push(other[i]!);
  }
  return out;
}

export interface Cidr {
  family: 4 | 6;
  base: bigint;
  bits: number;
  text: string;
  /** IPv4 only: base and netmask as uint32 numbers (matching without bigint allocations). */
  base4: number;
  mask4: number;
}

const ALL128 = (1n << 128n) - 1n;

function v4Text(n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

export function ipv4(n: number): IpAddr {
  return { family: 4, v4: n >>> 0, text: v4Text(n >>> 0) };
}

function v6Text(v: bigint): string {
  const groups: number[] = [];
  for (let i = 7; i >= 0; i--) groups.push(Number((v >> BigInt(i * 16)) & 0xffffn));
  // RFC 5952: compress the longest run (length >= 2) of zero groups.
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

/** An IPv6 value, unwrapped to IPv4 when it is IPv4-mapped. */
export function ipv6(v: bigint): IpAddr {
  if (v >> 32n === 0xffffn) return ipv4(Number(v & 0xffffffffn));
  return { family: 6, v6: v, text: v6Text(v) };
}

/** Strict dotted-quad decimal (what resolvers return). */
function parseDottedQuad(s: string): number | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (!m) return null;
  let n = 0;
  for (let i = 1; i <= 4; i++) {
    const p = Number(m[i]);
    if (p > 255 || (m[i]!.length > 1 && m[i]![0] === '0')) return null;
    n = n * 256 + p;
  }
  return n;
}

export function parseIPv6(input: string): bigint | null {
  let s = input;
  if (s.includes('%')) return null; // zone ids are link-local scoping: never valid here
  const lastColon = s.lastIndexOf(':');
  if (lastColon < 0) return null;
  const maybeV4 = s.slice(lastColon + 1);
  if (maybeV4.includes('.')) {
    const v4 = parseDottedQuad(maybeV4);
    if (v4 === null) return null;
    s = `${s.slice(0, lastColon + 1)}${(v4 >>> 16).toString(16)}:${(v4 & 0xffff).toString(16)}`;
  }
  const parts = s.split('::');
  if (parts.length > 2) return null;
  const parseGroups = (p: string): number[] | null => {
    if (p === '') return [];
    const out: number[] = [];
    for (const g of p.split(':')) {
      if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return null;
      out.push(parseInt(g, 16));
    }
    return out;
  };
  const head = parseGroups(parts[0]!);
  if (!head) return null;
  let groups: number[];
  if (parts.length === 2) {
    const rest = parseGroups(parts[1]!);
    if (!rest) return null;
    const fill = 8 - head.length - rest.length;
    if (fill < 1) return null;
    groups = [...head, ...new Array<number>(fill).fill(0), ...rest];
  } else {
    groups = head;
  }
  if (groups.length !== 8) return null;
  let v = 0n;
  for (const g of groups) v = (v << 16n) | BigInt(g);
  return v;
}

/** Any address a resolver may return, or an IP literal in a policy. */
export function parseIp(s: string): IpAddr | null {
  const v4 = parseDottedQuad(s);
  if (v4 !== null) return ipv4(v4);
  const bare = s.startsWith('[') && s.endsWith(']') ? s.slice(1, -1) : s;
  const v6 = parseIPv6(bare);
  return v6 === null ? null : ipv6(v6);
}

function parseV4Part(p: string): number | null {
  if (/^0x[0-9a-f]*$/i.test(p)) return p.length === 2 ? 0 : parseInt(p.slice(2), 16);
  if (/^0[0-7]+$/.test(p)) return parseInt(p.slice(1), 8);
  if (/^(0|[1-9][0-9]*)$/.test(p)) return Number(p);
  return null;
}

export type HostName = { kind: 'ip'; addr: IpAddr } | { kind: 'name'; name: string };

/**
 * Normalise a request host the way a URL parser or `inet_aton` would read it:
 * `2130706433`, `0x7f.1`, `127.1` and `0177.0.0.1` all mean 127.0.0.1. A host
 * whose last label is a number must be an IPv4 address (WHATWG "ends in a
 * number"); otherwise it is a DNS name. Returns null for anything invalid.
 */
export function normalizeHost(raw: string): HostName | null {
  const quad = parseDottedQuad(raw); // the common spelling: no further normalisation needed
  if (quad !== null) return { kind: 'ip', addr: ipv4(quad) };
  let h = raw.toLowerCase();
  if (h.startsWith('[')) {
    if (!h.endsWith(']')) return null;
    const v6 = parseIPv6(h.slice(1, -1));
    return v6 === null ? null : { kind: 'ip', addr: ipv6(v6) };
  }
  if (h.includes(':')) {
    const v6 = parseIPv6(h);
    return v6 === null ? null : { kind: 'ip', addr: ipv6(v6) };
  }
  if (h.endsWith('.')) h = h.slice(0, -1);
  if (h === '' || h.length > 253) return null;
  const labels = h.split('.');
  const last = labels[labels.length - 1]!;
  if (/^(\d+|0x[0-9a-f]*)$/.test(last)) {
    if (labels.length > 4) return null;
    const nums: number[] = [];
    for (const l of labels) {
      const n = parseV4Part(l);
      if (n === null) return null;
      nums.push(n);
    }
    let v = 0;
    for (let i = 0; i < nums.length - 1; i++) {
      if (nums[i]! > 255) return null;
      v = v * 256 + nums[i]!;
    }
    const lastBytes = 5 - nums.length;
    const lastVal = nums[nums.length - 1]!;
    if (lastVal >= 256 ** lastBytes) return null;
    v = v * 256 ** lastBytes + lastVal;
    return { kind: 'ip', addr: ipv4(v) };
  }
  for (const l of labels) {
    if (!/^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/.test(l)) return null;
  }
  return { kind: 'name', name: h };
}

export function parseCidr(s: string): Cidr | null {
  const slash = s.indexOf('/');
  const ipPart = slash < 0 ? s : s.slice(0, slash);
  const bitsPart = slash < 0 ? null : s.slice(slash + 1);
  const v4 = parseDottedQuad(ipPart);
  let family: 4 | 6;
  let value: bigint;
  if (v4 !== null) {
    family = 4;
    value = BigInt(v4);
  } else {
    const v6 = parseIPv6(ipPart);
    if (v6 === null) return null;
    if (v6 >> 32n === 0xffffn) {
      // ::ffff:a.b.c.d/n is the IPv4 range a.b.c.d/(n-96)
      family = 4;
      value = v6 & 0xffffffffn;
      if (bitsPart !== null) {
        if (!/^\d{1,3}$/.test(bitsPart) || Number(bitsPart) < 96 || Number(bitsPart) > 128) return null;
        return makeCidr(4, value, Number(bitsPart) - 96, s);
      }
    } else {
      family = 6;
      value = v6;
    }
  }
  const max = family === 4 ? 32 : 128;
  let bits = max;
  if (bitsPart !== null) {
    if (!/^\d{1,3}$/.test(bitsPart)) return null;
    bits = Number(bitsPart);
    if (bits > max) return null;
  }
  return makeCidr(family, value, bits, s);
}

function makeCidr(family: 4 | 6, value: bigint, bits: number, text: string): Cidr {
  const width = family === 4 ? 32n : 128n;
  const mask = bits === 0 ? 0n : (((1n << BigInt(bits)) - 1n) << (width - BigInt(bits))) & ALL128;
  const mask4 = family === 4 ? Number(mask & 0xffffffffn) : 0;
  return { family, base: value & mask, bits, text, base4: family === 4 ? Number(value & mask & 0xffffffffn) : 0, mask4 };
}

export function cidrContains(c: Cidr, a: IpAddr): boolean {
  if (c.family !== a.family) return false;
  if (a.family === 4) return ((a.v4 & c.mask4) >>> 0) === c.base4;
  const width = c.family === 4 ? 32n : 128n;
  const v = a.v6;
  if (c.bits === 0) return true;
  const shift = width - BigInt(c.bits);
  return v >> shift === c.base >> shift;
}

function cidr(text: string): Cidr {
  const c = parseCidr(text);
  if (!c) throw new Error(`bad built-in CIDR ${text}`);
  return c;
}

const INTERNAL_V4: Array<[Cidr, string]> = [
  [cidr('0.0.0.0/8'), 'unspecified'],
  [cidr('10.0.0.0/8'), 'private (RFC 1918)'],
  [cidr('100.64.0.0/10'), 'carrier-grade NAT'],
  [cidr('127.0.0.0/8'), 'loopback'],
  [cidr('169.254.0.0/16'), 'link-local'],
  [cidr('172.16.0.0/12'), 'private (RFC 1918)'],
  [cidr('192.0.0.0/24'), 'IETF protocol assignments'],
  [cidr('192.168.0.0/16'), 'private (RFC 1918)'],
  [cidr('198.18.0.0/15'), 'benchmarking'],
  [cidr('224.0.0.0/4'), 'multicast'],
  [cidr('240.0.0.0/4'), 'reserved'],
];

const INTERNAL_V6: Array<[Cidr, string]> = [
  [cidr('::/128'), 'unspecified'],
  [cidr('::1/128'), 'loopback'],
  [cidr('fe80::/10'), 'link-local'],
  [cidr('fec0::/10'), 'site-local'],
  [cidr('fc00::/7'), 'unique local (ULA)'],
  [cidr('ff00::/8'), 'multicast'],
  [cidr('100::/64'), 'discard'],
];

const EMBEDDED_V4: Array<[Cidr, (v: bigint) => number]> = [
  [cidr('::/96'), (v) => Number(v & 0xffffffffn)], // IPv4-compatible (deprecated)
  [cidr('64:ff9b::/96'), (v) => Number(v & 0xffffffffn)], // NAT64
  [cidr('64:ff9b:1::/48'), (v) => Number(v & 0xffffffffn)], // local-use NAT64
  [cidr('2002::/16'), (v) => Number((v >> 80n) & 0xffffffffn)], // 6to4
];

/** Why an address is internal (a short reason), or null for a public address. */
export function internalReason(a: IpAddr): string | null {
  if (a.family === 4) {
    for (const [c, why] of INTERNAL_V4) if (cidrContains(c, a)) return why;
    return null;
  }
  for (const [c, why] of INTERNAL_V6) if (cidrContains(c, a)) return why;
  for (const [c, extract] of EMBEDDED_V4) {
    if (cidrContains(c, a)) {
      const inner = internalReason(ipv4(extract(a.v6)));
      if (inner) return `${inner} (embedded IPv4)`;
    }
  }
  return null;
}

export function sameIp(a: IpAddr, b: IpAddr): boolean {
  return a.family === 4 ? b.family === 4 && a.v4 === b.v4 : b.family === 6 && a.v6 === b.v6;
}


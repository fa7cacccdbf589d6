import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { parse as parseYaml } from 'yaml';
import { normalizeHost, parseCidr, cidrContains, sameIp, type Cidr, type IpAddr } from './ip.js';
import type { Caller } from './caller.js';

/*
 * The network policy: a compatible subset of the reference schema. TypeBox
 * checks the shape; `parsePolicy` adds the semantic checks (wildcards, ports,
 * access xor rules, CIDRs) and names the offending field in every error.
 */

const PortSchema = Type.Integer({ minimum: 1, maximum: 65535 });
const MethodSchema = Type.String({ minLength: 1, maxLength: 32 });
const PathGlobSchema = Type.String({ minLength: 1, maxLength: 2048 });

export const L7RuleSchema = Type.Object(
  { method: MethodSchema, path: PathGlobSchema },
  { additionalProperties: false },
);

export const EndpointSchema = Type.Object(
  {
    host: Type.String({ minLength: 1, maxLength: 253 }),
    port: Type.Optional(PortSchema),
    ports: Type.Optional(Type.Array(PortSchema, { minItems: 1, maxItems: 1024 })),
    protocol: Type.Optional(Type.Literal('rest')),
    access: Type.Optional(Type.Union([Type.Literal('read-only'), Type.Literal('read-write'), Type.Literal('full')])),
    rules: Type.Optional(
      Type.Array(Type.Object({ allow: L7RuleSchema }, { additionalProperties: false }), { maxItems: 1024 }),
    ),
    deny_rules: Type.Optional(Type.Array(L7RuleSchema, { maxItems: 1024 })),
    allowed_ips: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { maxItems: 1024 })),
    enforcement: Type.Optional(Type.Union([Type.Literal('enforce'), Type.Literal('audit')])),
  },
  { additionalProperties: false },
);

/** An executable allowed to use the policy's endpoints: an absolute path, or a glob (`*` one segment, `**` any depth). */
export const BinarySchema = Type.Object({ path: Type.String({ minLength: 1, maxLength: 4096 }) }, { additionalProperties: false });

export const NetworkPolicySchema = Type.Object(
  {
    name: Type.Optional(Type.String({ maxLength: 256 })),
    endpoints: Type.Array(EndpointSchema, { maxItems: 4096 }),
    binaries: Type.Optional(Type.Array(BinarySchema, { maxItems: 1024 })),
  },
  { additionalProperties: false },
);

export const PolicySchema = Type.Object(
  {
    version: Type.Optional(Type.Literal(1)),
    network_policies: Type.Record(Type.String({ minLength: 1, maxLength: 256 }), NetworkPolicySchema),
  },
  { additionalProperties: false },
);

export type Policy = Static<typeof PolicySchema>;
export type PolicyEndpoint = Static<typeof EndpointSchema>;

/** An invalid policy. `field` is the dotted path, e.g. `network_policies.github.endpoints[0].host`. */
export class PolicyError extends Error {
  readonly field: string;
  readonly code = 'INVALID_ARGUMENT';
  constructor(field: string, message: string) {
    super(field ? `${field}: ${message}` : message);
    this.name = 'PolicyError';
    this.field = field;
  }
}

function pointerToField(pointer: string): string {
  let out = '';
  for (const raw of pointer.split('/').slice(1)) {
    const seg = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (/^\d+$/.test(seg)) out += `[${seg}]`;
    else out += out ? `.${seg}` : seg;
  }
  return out;
}

function firstSchemaError(schema: TSchema, input: unknown): PolicyError | null {
  const it = Value.Errors(schema, input)[Symbol.iterator]();
  const first = it.next();
  if (first.done) return null;
  const e = first.value;
  // For unions TypeBox only says "Expected union value": name the choices instead.
  let message = e.message;
  const anyOf = (e.schema as unknown as { anyOf?: Array<{ const?: unknown }> }).anyOf;
  if (Array.isArray(anyOf) && anyOf.every((s) => s.const !== undefined)) {
    const choices = anyOf.map((s) => JSON.stringify(s.const));
    message = `expected one of ${choices.join(', ')}`;
  }
  return new PolicyError(pointerToField(e.path), message);
}

const METHOD_RE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function checkHostPattern(field: string, host: string): void {
  if (host === '*' || host === '**') throw new PolicyError(field, `wildcard '${host}' is not allowed`);
  let rest = host;
  if (host.startsWith('**.')) rest = host.slice(3);
  else if (host.startsWith('*.')) rest = host.slice(2);
  if (rest.includes('*')) {
    throw new PolicyError(field, `wildcard must be a whole leading label ('*.' or '**.'): '${host}'`);
  }
  if (rest !== host) {
    const norm = normalizeHost(rest);
    if (!norm || norm.kind !== 'name') throw new PolicyError(field, `invalid host '${host}'`);
    if (!norm.name.includes('.')) {
      throw new PolicyError(field, `wildcard over a top-level domain ('${host}') is not allowed`);
    }
    return;
  }
  if (!normalizeHost(host)) throw new PolicyError(field, `invalid host '${host}'`);
}

function checkPathGlob(field: string, path: string): void {
  if (path !== '**' && path !== '*' && !path.startsWith('/')) {
    throw new PolicyError(field, `path glob must start with '/': '${path}'`);
  }
  if (/[?#\s]/.test(path)) throw new PolicyError(field, `path glob must not contain '?', '#' or whitespace`);
}

function checkBinaryPath(field: string, path: string): void {
  if (!path.startsWith('/')) throw new PolicyError(field, `binary path must be absolute: '${path}'`);
  if (/[\0\s]/.test(path)) throw new PolicyError(field, 'binary path must not contain whitespace or NUL');
  if (path.split('/').some((seg) => seg === '.' || seg === '..')) {
    throw new PolicyError(field, `binary path must not contain '.' or '..' segments: '${path}'`);
  }
}

function checkMethod(field: string, method: string): void {
  if (!METHOD_RE.test(method)) throw new PolicyError(field, `invalid method '${method}'`);
}

/**
 * Validate a policy object: TypeBox shape first, then semantics.
 * @throws PolicyError naming the offending field
 */
export function parsePolicy(input: unknown): Policy {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw new PolicyError('', 'policy must be an object');
  }
  const shapeError = firstSchemaError(PolicySchema, input);
  if (shapeError) throw shapeError;
  const policy = input as Policy;
  for (const [key, np] of Object.entries(policy.network_policies)) {
    const base = `network_policies.${key}`;
    np.binaries?.forEach((b, i) => checkBinaryPath(`${base}.binaries[${i}].path`, b.path));
    np.endpoints.forEach((ep, i) => {
      const f = `${base}.endpoints[${i}]`;
      checkHostPattern(`${f}.host`, ep.host);
      if (ep.port === undefined && ep.ports === undefined) throw new PolicyError(`${f}.port`, `'port' or 'ports' is required`);
      const hasAccess = ep.access !== undefined;
      const hasRules = ep.rules !== undefined;
      if (hasAccess && hasRules) throw new PolicyError(`${f}.rules`, `'access' and 'rules' are mutually exclusive`);
      if (ep.protocol === 'rest' && !hasAccess && !hasRules) {
        throw new PolicyError(`${f}.access`, `protocol 'rest' needs 'access' or 'rules'`);
      }
      if (ep.protocol !== 'rest') {
        for (const k of ['access', 'rules', 'deny_rules'] as const) {
          if (ep[k] !== undefined) throw new PolicyError(`${f}.${k}`, `'${k}' needs protocol: rest (L7)`);
        }
      }
      ep.rules?.forEach((r, j) => {
        checkMethod(`${f}.rules[${j}].allow.method`, r.allow.method);
        checkPathGlob(`${f}.rules[${j}].allow.path`, r.allow.path);
      });
      ep.deny_rules?.forEach((r, j) => {
        checkMethod(`${f}.deny_rules[${j}].method`, r.method);
        checkPathGlob(`${f}.deny_rules[${j}].path`, r.path);
      });
      ep.allowed_ips?.forEach((c, j) => {
        if (!parseCidr(c)) throw new PolicyError(`${f}.allowed_ips[${j}]`, `invalid IP or CIDR '${c}'`);
      });
    });
  }
  return policy;
}

/** YAML (a superset of JSON) text → `parsePolicy`. */
export function parsePolicyText(text: string): Policy {
  let doc: unknown;
  try {
    doc = parseYaml(text, { prettyErrors: false, maxAliasCount: 100 });
  } catch (err) {
    throw new PolicyError('', `policy is not valid YAML or JSON: ${(err as Error).message}`);
  }
  return parsePolicy(doc);
}

// ---------------------------------------------------------------- engine

const READ_ONLY = new Set(['GET', 'HEAD', 'OPTIONS']);
const READ_WRITE = new Set([...READ_ONLY, 'POST', 'PUT', 'PATCH']);

interface CompiledRule {
  method: string | null; // null = any
  path: RegExp;
}

/** One endpoint, ready for matching. */
export interface CompiledEndpoint {
  policy: string;
  label: string;
  hostKind: 'exact' | 'one' | 'deep';
  host: string; // exact name or IP text; for wildcards the suffix with its leading dot
  hostIp: IpAddr | null;
  ports: Set<number>;
  rest: boolean;
  access: Set<string> | 'all' | null;
  rules: CompiledRule[] | null;
  denyRules: CompiledRule[];
  allowedIps: Cidr[];
  audit: boolean;
  /** The policy's `binaries`, compiled; null: any process may use the endpoint. */
  binaries: RegExp[] | null;
}

/** `*` is one path segment, `**` (a whole segment) any depth including none. */
export function compilePathGlob(glob: string): RegExp {
  if (glob === '**' || glob === '/**') return /^.*$/s;
  if (glob === '*') return /^\/[^/]*$/;
  let re = '';
  for (const seg of glob.slice(1).split('/')) {
    if (seg === '**') re += '(?:/.*)?';
    else re += '/' + seg.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*+/g, '[^/]*');
  }
  return new RegExp(`^${re}$`, 's');
}

function compileRule(method: string, path: string): CompiledRule {
  const m = method.toUpperCase();
  return { method: m === '*' || m === 'ANY' ? null : m, path: compilePathGlob(path) };
}

export interface L7Verdict {
  allowed: boolean;
  reason: string;
}

/** A validated policy turned into matchers. Immutable: `setPolicy` swaps whole generations. */
export class CompiledPolicy {
  readonly endpoints: CompiledEndpoint[] = [];
  /** Some endpoint names binaries: a connection's caller must be known to decide it. */
  readonly needsCaller: boolean;

  constructor(policy: Policy) {
    for (const [key, np] of Object.entries(policy.network_policies)) {
      // An empty list restricts nothing, as in the reference schema.
      const binaries = np.binaries?.length ? np.binaries.map((b) => compilePathGlob(b.path)) : null;
      for (const ep of np.endpoints) {
        const ports = new Set<number>([...(ep.port !== undefined ? [ep.port] : []), ...(ep.ports ?? [])]);
        let hostKind: CompiledEndpoint['hostKind'] = 'exact';
        let host = ep.host.toLowerCase().replace(/\.$/, '');
        let hostIp: IpAddr | null = null;
        if (host.startsWith('**.')) {
          hostKind = 'deep';
          host = host.slice(2);
        } else if (host.startsWith('*.')) {
          hostKind = 'one';
          host = host.slice(1);
        } else {
          const n = normalizeHost(host);
          if (n?.kind === 'ip') {
            hostIp = n.addr;
            host = n.addr.text;
          } else if (n) host = n.name;
        }
        const rest = ep.protocol === 'rest';
        this.endpoints.push({
          policy: key,
          label: `${ep.host}:${[...ports].join(',')}`,
          hostKind,
          host,
          hostIp,
          ports,
          rest,
          access: ep.access === 'full' ? 'all' : ep.access === 'read-write' ? READ_WRITE : ep.access === 'read-only' ? READ_ONLY : null,
          rules: ep.rules ? ep.rules.map((r) => compileRule(r.allow.method, r.allow.path)) : null,
          denyRules: (ep.deny_rules ?? []).map((r) => compileRule(r.method, r.path)),
          allowedIps: (ep.allowed_ips ?? []).map((c) => parseCidr(c)!),
          audit: ep.enforcement === 'audit',
          binaries,
        });
      }
    }
    this.needsCaller = this.endpoints.some((ep) => ep.binaries !== null);
  }

  /**
   * The first endpoint (policy order, then endpoint order) that covers
   * host:port and, when its policy names binaries, `caller` (see
   * `callerAllowed`); `ANY_CALLER` skips that check. `host` is normalised.
   */
  match(host: string, port: number, caller: Caller | typeof ANY_CALLER | null = null): CompiledEndpoint | null {
    for (const ep of this.endpoints) {
      if (!ep.ports.has(port)) continue;
      if (ep.binaries !== null && caller !== ANY_CALLER && (caller === null || !callerAllowed(ep.binaries, caller))) continue;
      if (ep.hostKind === 'exact') {
        if (ep.host === host) return ep;
      } else if (host.endsWith(ep.host) && host.length > ep.host.length) {
        const label = host.slice(0, host.length - ep.host.length);
        if (ep.hostKind === 'deep' || !label.includes('.')) return ep;
      }
    }
    return null;
  }
}

/** `match`'s caller for a question about hosts alone: which endpoint covers host:port whatever process asks. */
export const ANY_CALLER = Symbol('any caller');

/**
 * Whether every process holding the connection is, or descends (inside the
 * sandbox) from, one of the binaries: its executable or an ancestor's
 * matches a path or glob (an agent's `node` spawning `git`). An
 * unidentified caller matches none.
 */
export function callerAllowed(binaries: readonly RegExp[], caller: Caller): boolean {
  if ('unknown' in caller) return false;
  return caller.procs.every((p) => binaries.some((re) => re.test(p.exe) || p.ancestors.some((a) => re.test(a))));
}

/** Is this resolved (or literal) address permitted for the endpoint despite being internal? */
export function endpointCoversIp(ep: CompiledEndpoint, addr: IpAddr): boolean {
  if (ep.hostIp && sameIp(ep.hostIp, addr)) return true;
  return ep.allowedIps.some((c) => cidrContains(c, addr));
}

/** L7 check of one request; `path` is already canonical. `deny_rules` win. */
export function checkRequest(ep: CompiledEndpoint, method: string, path: string): L7Verdict {
  for (const r of ep.denyRules) {
    if ((r.method === null || r.method === method) && r.path.test(path)) {
      return { allowed: false, reason: `deny rule matched ${method} ${path}` };
    }
  }
  if (ep.access === 'all') return { allowed: true, reason: 'access full' };
  if (ep.access) {
    return ep.access.has(method)
      ? { allowed: true, reason: 'access preset allows method' }
      : { allowed: false, reason: `method ${method} not permitted by access preset` };
  }
  for (const r of ep.rules ?? []) {
    if ((r.method === null || r.method === method) && r.path.test(path)) {
      return { allowed: true, reason: 'allow rule matched' };
    }
  }
  return { allowed: false, reason: `no rule allows ${method} ${path}` };
}

/** Index of the first '?' or '#' in a request target, or -1 (a loop over a short path, no regex). */
export function queryStart(target: string): number {
  for (let i = 0; i < target.length; i++) {
    const c = target.charCodeAt(i);
    if (c === 0x3f || c === 0x23) return i;
  }
  return -1;
}

/**
 * Canonicalise a request path before matching: drop the query, decode
 * percent-escapes, resolve `.` and `..`, collapse `//`. Returns null for what
 * a server could read differently than we do: encoded slashes or
 * backslashes, `..` above the root, bad escapes, NUL.
 */
export function canonicalPath(target: string): string | null {
  let p = target;
  const q = queryStart(p);
  if (q >= 0) p = p.slice(0, q);
  if (!p.startsWith('/')) return null;
  // Nothing to decode or resolve: already canonical.
  if (!/[%\\\0]|\/\.|\/\//.test(p)) return p;
  if (/%2f|%5c|\\/i.test(p)) return null;
  let decoded: string;
  try {
    decoded = decodeURIComponent(p);
  } catch {
    return null;
  }
  if (decoded.includes('\0') || decoded.includes('\\')) return null;
  const out: string[] = [];
  const segs = decoded.split('/');
  for (let i = 1; i < segs.length; i++) {
    const s = segs[i]!;
    if (s === '' || s === '.') {
      if (i === segs.length - 1) out.push('');
      continue;
    }
    if (s === '..') {
      if (out.length === 0) return null;
      out.pop();
      if (i === segs.length - 1) out.push('');
      continue;
    }
    out.push(s);
  }
  return '/' + out.join('/');
}

import { JsonText, type JsonBytes } from '../log.js';

/** One allow/deny/audit decision, logged and handed to `onDecision` (for the gateway's logs). */
export interface EgressDecision {
  time: string;
  action: 'allow' | 'deny' | 'audit';
  host: string;
  port: number;
  method?: string;
  path?: string;
  policy?: string;
  endpoint?: string;
  /** The executables of the client's processes, when a policy that names binaries decided it (undefined: left out). */
  binary?: string | undefined;
  reason: string;
  layer: 'L4' | 'L7';
}

/** What JSON.stringify escapes in a string: `"`, `\`, control characters and (lone) surrogates. */
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/;

function str(s: string): string {
  return NEEDS_ESCAPE.test(s) ? JSON.stringify(s) : `"${s}"`;
}

function opt(key: string, s: string | undefined): string {
  return s === undefined ? '' : `,"${key}":${str(s)}`;
}

// The parts of the last decision's JSON that a run of decisions repeats
// (the same endpoint, request after request): rebuilt only when they change,
// their UTF-8 bytes encoded when first written (`writeDecision`).
// `undefined` at first: no decision matches it.
let midAction: string | undefined;
let midHost = '';
let midPort = -1;
let midJson = '';
let tailPolicy: string | undefined;
let tailEndpoint: string | undefined;
let tailBinary: string | undefined;
let tailReason: string | undefined;
let tailLayer = '';
let tailJson = '';
let tailBytes: Buffer | undefined;
let lastMethod: string | undefined;
let methodJson = '';
/** `{"time":…` through the method and the path's key, for the last decision written. */
let headTime: string | undefined;
let headPath = false;
let headBytes: Buffer | undefined;

/** Brings the kept parts up to `d`. */
function keep(d: EgressDecision): void {
  if (d.action !== midAction || d.host !== midHost || !Object.is(d.port, midPort)) {
    midAction = d.action;
    midHost = d.host;
    midPort = d.port;
    midJson = `,"action":${str(d.action)},"host":${str(d.host)},"port":${Number.isFinite(d.port) ? d.port : 'null'}`;
    headBytes = undefined;
  }
  if (d.method !== lastMethod) {
    lastMethod = d.method;
    methodJson = opt('method', d.method);
    headBytes = undefined;
  }
  if (d.policy !== tailPolicy || d.endpoint !== tailEndpoint || d.binary !== tailBinary || d.reason !== tailReason || d.layer !== tailLayer) {
    tailPolicy = d.policy;
    tailEndpoint = d.endpoint;
    tailBinary = d.binary;
    tailReason = d.reason;
    tailLayer = d.layer;
    tailJson = `${opt('policy', d.policy)}${opt('endpoint', d.endpoint)}${opt('binary', d.binary)},"reason":${str(d.reason)},"layer":${str(d.layer)}}`;
    tailBytes = undefined;
  }
}

/**
 * A decision's JSON, the same text as `JSON.stringify(d)` for a decision
 * built with its keys in declaration order (as the proxy builds them). The
 * proxy logs one per L7 request: a template, with the parts that repeat
 * from the last decision (action to port, method, policy to layer) kept,
 * instead of JSON.stringify's generic walk.
 */
export function decisionJson(d: EgressDecision): string {
  keep(d);
  return `{"time":${str(d.time)}${midJson}${methodJson}${opt('path', d.path)}${tailJson}`;
}

/**
 * Writes the same text as `decisionJson(d)` to `out`: the kept parts as
 * bytes (encoded once per change), the path as a JSON string. The time is
 * kept with them: decisions within a millisecond share it.
 */
export function writeDecision(d: EgressDecision, out: JsonBytes): void {
  keep(d);
  const path = d.path;
  if (d.time !== headTime || (path !== undefined) !== headPath) {
    headTime = d.time;
    headPath = path !== undefined;
    headBytes = undefined;
  }
  out.bytes((headBytes ??= Buffer.from(`{"time":${str(d.time)}${midJson}${methodJson}${headPath ? ',"path":' : ''}`)));
  if (path !== undefined) out.string(path);
  out.bytes((tailBytes ??= Buffer.from(tailJson)));
}

/**
 * A decision as a log field: the supervisor's logger has it write its
 * bytes into the line, only when the line is written; other loggers
 * serialise the decision itself (`toJSON`).
 */
export class DecisionField extends JsonText {
  constructor(readonly decision: EgressDecision) {
    super();
  }

  json(): string {
    return decisionJson(this.decision);
  }

  override writeJson(out: JsonBytes): void {
    writeDecision(this.decision, out);
  }

  override toJSON(): EgressDecision {
    return this.decision;
  }
}

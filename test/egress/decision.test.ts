import t from 'tap';
import { decisionJson, DecisionField, type EgressDecision } from '../../src/egress/decision.js';
import { createSupervisorLogger } from '../../src/supervisor/log.js';
import { JsonText } from '../../src/log.js';
import { seededRandom } from '../helpers/random.js';

// Strings with everything JSON.stringify treats specially: quotes, backslashes,
// control characters, DEL, Latin-1, a surrogate pair and lone surrogates.
const PIECES = ['a', '/', 'api.example.test', '"', '\\', '\n', '\r', '\t', '\u0000', '\u001f', '\u007f', 'é', '\u2028', '😀', '\ud800', '\udfff', ' ', '%2F', ':'];

function randomString(rnd: (n: number) => number): string {
  let s = '';
  for (let n = rnd(6); n > 0; n--) s += PIECES[rnd(PIECES.length)];
  return s;
}

function randomDecision(rnd: (n: number) => number): EgressDecision {
  const maybe = (): string | undefined => (rnd(3) === 0 ? undefined : randomString(rnd));
  const d: Partial<EgressDecision> = {
    time: new Date(rnd(2 ** 31) * 1000).toISOString(),
    action: (['allow', 'deny', 'audit'] as const)[rnd(3)]!,
    host: randomString(rnd),
    port: [0, 1, 443, 65535, NaN][rnd(5)]!,
  };
  // The proxy builds decisions with the optional keys in this order, and leaves out the absent ones.
  const method = maybe();
  const path = maybe();
  const policy = maybe();
  const endpoint = maybe();
  const binary = maybe();
  if (method !== undefined) d.method = method;
  if (path !== undefined) d.path = path;
  if (policy !== undefined) d.policy = policy;
  if (endpoint !== undefined) d.endpoint = endpoint;
  if (binary !== undefined) d.binary = binary;
  d.reason = randomString(rnd);
  d.layer = rnd(2) === 0 ? 'L4' : 'L7';
  return d as EgressDecision;
}

/**
 * `n` decisions, each key taken from the decision before or (one time in
 * `freshOdds`) from a fresh one, in declaration order, absent ones left out:
 * runs that repeat most of the decision before, as the proxy's do.
 */
function repeatingDecisions(rnd: (n: number) => number, n: number, freshOdds: number): EgressDecision[] {
  const keys = ['time', 'action', 'host', 'port', 'method', 'path', 'policy', 'endpoint', 'binary', 'reason', 'layer'] as const;
  const out: EgressDecision[] = [];
  let prev = randomDecision(rnd);
  for (let i = 0; i < n; i++) {
    const fresh = randomDecision(rnd);
    const d: Record<string, unknown> = {};
    for (const k of keys) {
      const v = (rnd(freshOdds) === 0 ? fresh : prev)[k];
      if (v !== undefined) d[k] = v;
    }
    prev = d as unknown as EgressDecision;
    out.push(prev);
  }
  return out;
}

/** A logger's write and sink that keep what they get; `written` resolves at the first write. */
function collect(): {
  writes: string[];
  sunk: string[];
  written: Promise<void>;
  write: (bytes: Buffer) => void;
  sink: (bytes: Buffer, start: number, end: number) => void;
} {
  const writes: string[] = [];
  const sunk: string[] = [];
  let onWrite: () => void = () => undefined;
  const written = new Promise<void>((resolve) => (onWrite = resolve));
  return {
    writes,
    sunk,
    written,
    write: (bytes) => {
      writes.push(bytes.toString());
      onWrite();
    },
    sink: (bytes, start, end) => sunk.push(bytes.toString('utf8', start, end)),
  };
}

t.test('a decision serialises to the same text as JSON.stringify', async (t) => {
  const rnd = seededRandom(4242);
  let bad = 0;
  for (let i = 0; i < 20000; i++) {
    const d = randomDecision(rnd);
    if (decisionJson(d) !== JSON.stringify(d) && bad++ < 5) t.fail('differs', { d, ours: decisionJson(d), json: JSON.stringify(d) });
  }
  t.equal(bad, 0, '20000 random decisions');
  const d: EgressDecision = { time: 'T', action: 'deny', host: 'h', port: 1, method: 'GET', path: '/"x"\\', reason: 'r\n', layer: 'L7' };
  t.equal(decisionJson(d), JSON.stringify(d), 'escapes in a fixed case');
});

t.test('decisions that repeat parts of the one before (the parts kept between calls) serialise like JSON.stringify', async (t) => {
  let bad = 0;
  for (const decision of repeatingDecisions(seededRandom(77), 20000, 4)) {
    if (decisionJson(decision) !== JSON.stringify(decision) && bad++ < 5) t.fail('differs', { decision });
  }
  t.equal(bad, 0, '20000 decisions, each mostly the one before');
  const base: EgressDecision = { time: 'T', action: 'allow', host: 'h', port: 80, method: 'GET', path: '/a', policy: 'p', endpoint: 'h:80', reason: 'r', layer: 'L7' };
  const { method: _m, policy: _p, ...bare } = base;
  for (const d of [base, { ...base, path: '/b' }, bare, base, { ...base, port: 81 }, { ...base, reason: '' }, { ...base, action: 'deny' as const }, base]) {
    t.equal(decisionJson(d), JSON.stringify(d), JSON.stringify(d));
  }
});

t.test('a decision field: the supervisor logger splices its JSON in; others see the decision', async (t) => {
  const { writes, sunk, written, write, sink } = collect();
  const log = createSupervisorLogger({ bindings: { sandboxId: 'sb-1' }, write, sink }).child({ component: 'egress' });
  const decision: EgressDecision = { time: 'T', action: 'allow', host: 'a.test', port: 80, method: 'GET', path: '/"q"', policy: 'p', endpoint: 'a.test:80', reason: 'rule', layer: 'L7' };
  log.info({ decision: new DecisionField(decision), n: 2 }, 'egress decision');
  log.info({ decision: new DecisionField(decision), msg: 'a field named like a key the line has' });
  await written;
  const [a, b] = writes.join('').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.same(a, { level: 30, time: a!.time, sandboxId: 'sb-1', component: 'egress', decision, n: 2, msg: 'egress decision' });
  t.same(b!.decision, decision, 'the slow path (a field clashing with a line key) serialises it too');
  t.equal(b!._msg, 'a field named like a key the line has');
  t.same(JSON.parse(sunk[0]!), a, 'the gateway gets the same line');
  t.equal(JSON.stringify({ decision: new DecisionField(decision) }), JSON.stringify({ decision }), 'JSON.stringify (pino) sees the decision');
});

t.test('the supervisor logger writes json(), not toJSON(), and calls it only for a line it writes', async (t) => {
  let calls = 0;
  class Marked extends JsonText {
    json(): string {
      calls++;
      return '"from json()"';
    }
    override toJSON(): string {
      return 'from toJSON()';
    }
  }
  const { writes, sunk, written, write, sink } = collect();
  const log = createSupervisorLogger({ level: 'info', write, sink });
  log.debug({ v: new Marked() }, 'below the level');
  t.equal(calls, 0, 'not serialised for a line below the level');
  log.info({ v: new Marked(), n: 1 }, 'm');
  await written;
  t.equal(calls, 1, 'serialised once for both the line and the gateway copy');
  t.match(writes.join(''), '{"level":30,', 'written');
  t.same((JSON.parse(writes.join('')) as { v: unknown }).v, 'from json()');
  t.match(JSON.parse(sunk[0]!), { v: 'from json()', n: 1 }, 'and so does the gateway');
});

t.test("the supervisor logger writes a decision's bytes (writeDecision) as the same text as JSON.stringify", async (t) => {
  const lines: string[] = [];
  const log = createSupervisorLogger({ write: () => undefined, sink: (bytes, start, end) => lines.push(bytes.toString('utf8', start, end)) });
  const decisions = repeatingDecisions(seededRandom(5150), 20000, 3);
  for (const decision of decisions) log.info({ decision: new DecisionField(decision) }, 'egress decision');
  let bad = 0;
  for (let i = 0; i < decisions.length; i++) {
    const at = lines[i]!.indexOf(',"decision":') + ',"decision":'.length;
    const got = lines[i]!.slice(at, -',"msg":"egress decision"}'.length);
    if (got !== JSON.stringify(decisions[i]) && bad++ < 5) t.fail('differs', { got, want: JSON.stringify(decisions[i]) });
  }
  t.equal(lines.length, decisions.length);
  t.equal(bad, 0, '20000 decisions, each mostly the one before');
});

t.test('a binary key that is undefined is left out, as JSON.stringify leaves it out', async (t) => {
  const d: EgressDecision = { time: 'T', action: 'allow', host: 'h', port: 80, method: 'GET', path: '/a', policy: 'p', endpoint: 'h:80', binary: undefined, reason: 'r', layer: 'L7' };
  t.equal(decisionJson(d), JSON.stringify(d));
  t.notMatch(decisionJson(d), /binary/);
  const named = { ...d, binary: '/usr/bin/curl (via /usr/bin/dash)' };
  t.equal(decisionJson(named), JSON.stringify(named));
});

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
  if (method !== undefined) d.method = method;
  if (path !== undefined) d.path = path;
  if (policy !== undefined) d.policy = policy;
  if (endpoint !== undefined) d.endpoint = endpoint;
  d.reason = randomString(rnd);
  d.layer = rnd(2) === 0 ? 'L4' : 'L7';
  return d as EgressDecision;
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

t.test('a decision field: the supervisor logger splices its JSON in; others see the decision', async (t) => {
  const writes: string[] = [];
  const sunk: string[] = [];
  const log = createSupervisorLogger({ bindings: { sandboxId: 'sb-1' }, write: (s) => writes.push(s), sink: (l) => sunk.push(l) }).child({ component: 'egress' });
  const decision: EgressDecision = { time: 'T', action: 'allow', host: 'a.test', port: 80, method: 'GET', path: '/"q"', policy: 'p', endpoint: 'a.test:80', reason: 'rule', layer: 'L7' };
  log.info({ decision: new DecisionField(decision), n: 2 }, 'egress decision');
  log.info({ decision: new DecisionField(decision), msg: 'a field named like a key the line has' });
  await new Promise((r) => setImmediate(r));
  const [a, b] = writes.join('').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.same(a, { level: 30, time: a!.time, sandboxId: 'sb-1', component: 'egress', decision, n: 2, msg: 'egress decision' });
  t.same(b!.decision, decision, 'the slow path (a field clashing with a line key) serialises it too');
  t.same((JSON.parse(sunk[0]!) as { fields: unknown }).fields, { sandboxId: 'sb-1', component: 'egress', decision, n: 2 });
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
  const writes: string[] = [];
  const sunk: string[] = [];
  const log = createSupervisorLogger({ level: 'info', write: (s) => writes.push(s), sink: (l) => sunk.push(l) });
  log.debug({ v: new Marked() }, 'below the level');
  t.equal(calls, 0, 'not serialised for a line below the level');
  log.info({ v: new Marked(), n: 1 }, 'm');
  await new Promise((r) => setImmediate(r));
  t.equal(calls, 1, 'serialised once for both the line and the gateway copy');
  t.match(writes.join(''), '{"level":30,', 'written');
  t.same((JSON.parse(writes.join('')) as { v: unknown }).v, 'from json()');
  t.same((JSON.parse(sunk[0]!) as { fields: unknown }).fields, { v: 'from json()', n: 1 });
});

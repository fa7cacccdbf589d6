import t from 'tap';
import type { ExecResult, Sandbox, SandboxList } from '../../src/schemas/sandbox.js';
import { api, startGateway, waitForPhase } from '../helpers/gateway.js';

const SECRET = 'hunter2-do-not-show';

t.test('a sandbox shows the names of its env, never the values; its processes get the values', async (t) => {
  const gw = await startGateway(t);
  const created = await api<Sandbox>(gw.url, 'POST', '/v1/sandboxes', { name: 'keeper', env: { API_KEY: SECRET, TASK: 'x' } });
  t.equal(created.status, 201);
  t.same(created.body.env, ['API_KEY', 'TASK'], 'create answers the names');
  await waitForPhase(gw.app, 'keeper', 'Ready');

  const got = await fetch(`${gw.url}/v1/sandboxes/keeper`).then((r) => r.text());
  const list = await fetch(`${gw.url}/v1/sandboxes`).then((r) => r.text());
  t.same((JSON.parse(got) as Sandbox).env, ['API_KEY', 'TASK']);
  t.same((JSON.parse(list) as SandboxList).sandboxes[0]!.env, ['API_KEY', 'TASK']);
  t.notMatch(got, SECRET, 'get does not show the value');
  t.notMatch(list, SECRET, 'list does not show the value');
  const watch = await fetch(`${gw.url}/v1/sandboxes/keeper/watch`, { signal: AbortSignal.timeout(10_000) });
  const reader = (watch.body as ReadableStream<Uint8Array>).getReader();
  const first = Buffer.from((await reader.read()).value ?? []).toString();
  await reader.cancel();
  t.match(first, /"env":\["API_KEY","TASK"\]/, 'watch snapshots too');
  t.notMatch(first, SECRET);

  const ran = await api<ExecResult>(gw.url, 'POST', '/v1/sandboxes/keeper/exec', { command: 'printf %s "$API_KEY"' }, { accept: 'application/json' });
  t.equal(ran.body.stdout, SECRET, 'the sandbox still gets the value');

  const deleting = await fetch(`${gw.url}/v1/sandboxes/keeper`, { method: 'DELETE' }).then((r) => r.text());
  t.notMatch(deleting, SECRET, 'nor does delete');

  type Doc = { paths: Record<string, { get: { responses: Record<string, { content: Record<string, { schema: { properties: Record<string, unknown> } }> }> } }> };
  const docs = await api<Doc>(gw.url, 'GET', '/docs/json');
  const schema = docs.body.paths['/v1/sandboxes/{name}']?.get.responses['200']?.content['application/json']?.schema;
  t.match(schema?.properties.env, { type: 'array', items: { type: 'string' } }, 'the OpenAPI document says so');
});

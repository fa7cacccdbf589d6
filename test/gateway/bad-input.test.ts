import t from 'tap';
import { api, startGateway } from '../helpers/gateway.js';

interface Envelope {
  error: { code: string; message: string; details?: { field?: string } };
}

t.test('bad input gets a 4xx envelope naming the field; the gateway keeps serving', async (t) => {
  const gw = await startGateway(t);
  const post = (body: unknown) => api<Envelope>(gw.url, 'POST', '/v1/sandboxes', body);

  const badJson = await post('{"name": ');
  t.equal(badJson.status, 400);
  t.equal(badJson.body.error.code, 'INVALID_ARGUMENT');
  t.match(badJson.body.error.message, /body/);

  const cases: Array<[unknown, string]> = [
    [{ name: 'Upper' }, 'body.name'],
    [{ name: '../x' }, 'body.name'],
    [{ name: 'a'.repeat(64) }, 'body.name'],
    [{ name: 'ok-name', command: 'not-an-array' }, 'body.command'],
    [{ ttlSeconds: 'soon' }, 'body.ttlSeconds'],
    [{ ttlSeconds: -1 }, 'body.ttlSeconds'],
    [{ labels: { team: 5 } }, 'body.labels.team'],
    [{ env: { 'BAD-KEY': 'x' } }, 'body.env'],
    [{ nmae: 'typo' }, 'body.nmae'],
    [{ policy: 'allow-all' }, 'policy'],
  ];
  for (const [body, field] of cases) {
    const res = await post(body);
    t.equal(res.status, 400, `${JSON.stringify(body).slice(0, 40)} → 400`);
    t.equal(res.body.error.code, 'INVALID_ARGUMENT');
    t.match(res.body.error.message, field, `names ${field}: ${res.body.error.message}`);
  }

  t.equal((await post({ name: 'dup' })).status, 201);
  const dup = await post({ name: 'dup' });
  t.equal(dup.status, 409);
  t.equal(dup.body.error.code, 'ALREADY_EXISTS');
  t.equal(dup.body.error.details?.field, 'name');

  const big = await post({ name: 'big', env: { X: 'y'.repeat(2 * 1024 * 1024) } });
  t.equal(big.status, 413);
  t.equal(big.body.error.code, 'PAYLOAD_TOO_LARGE');

  const missing = await api<Envelope>(gw.url, 'GET', '/v1/sandboxes/nope');
  t.equal(missing.status, 404);
  t.equal(missing.body.error.code, 'SANDBOX_NOT_FOUND');
  t.equal((await api<Envelope>(gw.url, 'DELETE', '/v1/sandboxes/nope')).status, 404);
  t.equal((await api<Envelope>(gw.url, 'GET', '/v1/sandboxes/BAD_NAME')).status, 400);
  t.equal((await api<Envelope>(gw.url, 'GET', '/v1/sandboxes?label=novalue')).status, 400);
  const unknownRoute = await api<Envelope>(gw.url, 'GET', '/v1/nothing-here');
  t.equal(unknownRoute.status, 404);
  t.equal(unknownRoute.body.error.code, 'NOT_FOUND');

  t.equal((await api(gw.url, 'GET', '/healthz')).status, 200, 'still serving');
  const docs = await api<{ openapi: string; paths: Record<string, unknown> }>(gw.url, 'GET', '/docs/json');
  t.equal(docs.status, 200);
  t.ok(docs.body.paths['/v1/sandboxes'], 'OpenAPI document lists the routes');
});

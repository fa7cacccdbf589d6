import t from 'tap';
import { execStream } from '../helpers/exec.js';
import { api, startGateway, waitForPhase } from '../helpers/gateway.js';

t.test('GET /metrics reports sessions, relays, execs and bytes', async (t) => {
  const gw = await startGateway(t);
  await api(gw.url, 'POST', '/v1/sandboxes', { name: 'metered' });
  await waitForPhase(gw.app, 'metered', 'Ready');
  await execStream(gw.url, 'metered', { command: ['echo', 'counted'] });
  // The exec is counted when its response stream closes, just after the client read the exit line.
  let res = await fetch(`${gw.url}/metrics`);
  let text = await res.text();
  const deadline = Date.now() + 5000;
  while (!/openshell_exec_duration_seconds_count\{outcome="exit"\} 1/.test(text) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
    res = await fetch(`${gw.url}/metrics`);
    text = await res.text();
  }
  t.equal(res.status, 200);
  t.match(res.headers.get('content-type'), /text\/plain/);
  t.match(text, /openshell_sessions_connected 1/);
  t.match(text, /openshell_relays_pending 0/);
  t.match(text, /openshell_relay_opens_total\{target="exec",result="ok"\} 1/);
  t.match(text, /openshell_exec_duration_seconds_count\{outcome="exit"\} 1/);
  t.match(text, /openshell_execs_in_flight 0/);
  t.match(text, /openshell_relay_bytes_total\{direction="from_sandbox"\} \d+/);
});

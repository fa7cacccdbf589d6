import t from 'tap';
import { needsMasking, wsUrl } from '../../src/supervisor/control-client.js';

t.test('relay frames are masked with random keys unless the endpoint is TLS, loopback or a Unix socket', async (t) => {
  for (const endpoint of ['unix:/var/lib/openshell/gateway.sock', 'https://gw.example.com', 'wss://10.0.0.5:8443', 'http://127.0.0.1:8080', 'http://127.9.9.9', 'ws://localhost:1', 'http://[::1]:8080']) {
    t.equal(needsMasking(endpoint), false, endpoint);
  }
  for (const endpoint of ['http://gw.example.com:8080', 'ws://10.0.0.5', 'http://[::2]:80', 'http://127.0.0.1.example.com', 'http://0.0.0.0:8080']) {
    t.equal(needsMasking(endpoint), true, endpoint);
  }
});

t.test('endpoint + path → WebSocket URL, Unix sockets included', async (t) => {
  t.equal(wsUrl('http://127.0.0.1:8080', '/v1/supervisor/session'), 'ws://127.0.0.1:8080/v1/supervisor/session');
  t.equal(wsUrl('https://gw.example.com/base/', '/v1/supervisor/relay/c1'), 'wss://gw.example.com/base/v1/supervisor/relay/c1');
  t.equal(wsUrl('unix:/var/lib/openshell/gateway.sock', '/v1/supervisor/session'), 'ws+unix:///var/lib/openshell/gateway.sock:/v1/supervisor/session');
});

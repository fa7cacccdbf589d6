import t from 'tap';
import { needsMasking } from '../../src/supervisor/control-client.js';

t.test('relay frames are masked with random keys unless the endpoint is TLS or loopback', async (t) => {
  for (const endpoint of ['https://gw.example.com', 'wss://10.0.0.5:8443', 'http://127.0.0.1:8080', 'http://127.9.9.9', 'ws://localhost:1', 'http://[::1]:8080']) {
    t.equal(needsMasking(endpoint), false, endpoint);
  }
  for (const endpoint of ['http://gw.example.com:8080', 'ws://10.0.0.5', 'http://[::2]:80', 'http://127.0.0.1.example.com', 'http://0.0.0.0:8080']) {
    t.equal(needsMasking(endpoint), true, endpoint);
  }
});

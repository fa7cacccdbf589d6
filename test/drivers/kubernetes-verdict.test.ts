// The Pod → backend-state mapping and the quantities, as plain data (no API server needed).
import t from 'tap';
import type { V1Pod } from '@kubernetes/client-node';
import { podVerdict, resourceRequirements } from '../../src/drivers/kubernetes.js';

const now = Date.parse('2026-01-01T00:10:00Z');
const pod = (status: V1Pod['status'], created = '2026-01-01T00:09:59Z', extra: Partial<V1Pod['metadata']> = {}): V1Pod => ({
  metadata: { name: 'sbx-1', creationTimestamp: created as unknown as Date, ...extra },
  status,
});

t.test('podVerdict', async (t) => {
  t.match(podVerdict(pod({ phase: 'Pending' }), now, 60_000), { state: 'Running', pending: true });
  t.match(podVerdict(pod({ phase: 'Running' }), now, 60_000), { state: 'Running', pending: false, message: /waiting for the supervisor/ });
  t.match(podVerdict(pod({ phase: 'Failed', reason: 'Evicted', message: 'low on memory' }), now, 60_000), {
    state: 'Error',
    message: 'Pod failed: Evicted: low on memory',
  });
  t.match(
    podVerdict(
      pod({
        phase: 'Running',
        containerStatuses: [{ name: 'sandbox', image: 'x', imageID: '', ready: false, restartCount: 0, state: { terminated: { exitCode: 137, reason: 'OOMKilled' } } }],
      }),
      now,
      60_000,
    ),
    { state: 'Error', message: 'container sandbox terminated: OOMKilled (exit code 137)' },
    'a terminated workload is an Error before the Pod turns Failed',
  );
  t.match(
    podVerdict(
      pod({
        phase: 'Pending',
        initContainerStatuses: [{ name: 'supervisor-bundle', image: 'x', imageID: '', ready: false, restartCount: 0, state: { waiting: { reason: 'ErrImagePull', message: 'not found' } } }],
      }),
      now,
      60_000,
    ),
    { state: 'Error', message: 'ErrImagePull: container supervisor-bundle: not found' },
    'the supervisor image failing to pull is an Error too',
  );
  t.match(
    podVerdict(
      pod({ phase: 'Pending', conditions: [{ type: 'PodScheduled', status: 'False', reason: 'Unschedulable', message: 'no nodes' }] }, '2026-01-01T00:00:00Z'),
      now,
      60_000,
    ),
    { state: 'Error', message: 'Pod still Pending after 60 s (Unschedulable: no nodes)' },
  );
  t.match(podVerdict(pod({ phase: 'Succeeded' }), now, 60_000), { state: 'Error', message: /the supervisor exited/ });
  t.match(podVerdict(pod({ phase: 'Running' }, undefined, { deletionTimestamp: new Date() }), now, 60_000), {
    state: 'Error',
    message: /being deleted outside the gateway/,
  });
});

t.test('resourceRequirements', async (t) => {
  t.equal(resourceRequirements({}), undefined);
  t.same(resourceRequirements({ cpus: 1.25, memoryMb: 100, diskMb: 10 }), {
    requests: { cpu: '1250m', memory: '100Mi', 'ephemeral-storage': '10Mi' },
    limits: { cpu: '1250m', memory: '100Mi', 'ephemeral-storage': '10Mi' },
  });
  t.same(resourceRequirements({ cpus: 0.0001 })?.limits, { cpu: '1m' }, 'at least one millicore');
});

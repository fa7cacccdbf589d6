// deploy/kubernetes against a real kube-apiserver: server-side dry run of the whole base,
// its essentials, and its Role: each verb taken away makes the matching driver call fail
// with PERMISSION_DENIED, so the Role grants exactly what the driver calls.
import t from 'tap';
import { KubernetesObjectApi, type KubernetesObject, type V1PolicyRule } from '@kubernetes/client-node';
import pino from 'pino';
import { loadConfig } from '../../src/config.js';
import { KubernetesDriver } from '../../src/drivers/kubernetes.js';
import type { SandboxSpec } from '../../src/drivers/types.js';
import { TEST_USERS, k8sSkipReason, makeNamespace, startKubeApiServer, type KubeApiServer } from '../helpers/kube-apiserver.js';
import { findObject, renderKustomization, type K8sObject } from '../helpers/kustomize.js';

// Starting etcd and kube-apiserver alone takes 10–60 s on a loaded 2-core machine: more than .taprc's 180 s per file.
t.setTimeout(360_000);

const skip = k8sSkipReason();
if (skip) t.comment(`skipping the Kubernetes tests: ${skip}`);

const log = pino({ level: 'silent' });

function spec(id: string): SandboxSpec {
  return {
    id,
    name: id.replace(/_/g, '-'),
    image: 'busybox:test',
    command: ['sleep', 'infinity'],
    env: {},
    token: 'secret-token',
    endpoint: 'http://openshell.test.svc:8080',
    resources: {},
  };
}

t.test('deploy/kubernetes', { skip, timeout: 240_000 }, async (t) => {
  const k = await startKubeApiServer(t);

  t.test('server-side dry run accepts the whole base; the essentials are as designed', async (t) => {
    const objects = renderKustomization();
    const client = KubernetesObjectApi.makeApiClient(k.kubeConfig());
    const ns = findObject(objects, 'Namespace').metadata.name;
    t.equal(ns, 'openshell');
    // Cluster-scoped first, dry run; then the Namespace for real, because namespaced dry runs need it.
    await client.create(findObject(objects, 'Namespace') as KubernetesObject, undefined, 'All');
    await t.rejects(k.admin.readNamespace({ name: ns }), 'a dry run creates nothing');
    await k.admin.createNamespace({ body: findObject(objects, 'Namespace') as never });
    const accepted: string[] = [];
    for (const obj of objects) {
      if (obj.kind === 'Namespace') continue;
      const out = (await client.create(obj as KubernetesObject, undefined, 'All')) as K8sObject;
      t.equal(out.metadata.namespace, ns, `${obj.kind} ${obj.metadata.name} lands in ${ns}`);
      accepted.push(`${obj.kind}/${obj.metadata.name}`);
    }
    t.same(accepted.sort(), [
      'Deployment/openshell',
      'NetworkPolicy/openshell-sandboxes',
      'PersistentVolumeClaim/openshell-state',
      'Role/openshell-gateway',
      'RoleBinding/openshell-gateway',
      'Service/openshell',
      'ServiceAccount/openshell',
    ]);
    await t.rejects(k.admin.readNamespacedService({ name: 'openshell', namespace: ns }), 'dry run: no Service made');

    // The Service: ClusterIP, port 8080 named http, selecting the gateway's Pods.
    const svc = findObject<Svc>(objects, 'Service');
    t.equal(svc.spec.type, 'ClusterIP');
    t.same(svc.spec.ports.map((p) => [p.name, p.port, p.targetPort]), [['http', 8080, 'http']]);
    const dep = findObject<Dep>(objects, 'Deployment');
    const pod = dep.spec.template;
    t.match(pod.metadata.labels, svc.spec.selector, 'the Service selects the Deployment Pods');
    t.equal(dep.spec.replicas, 1);
    t.equal(dep.spec.strategy.type, 'Recreate', 'never two gateways on one SQLite volume');
    t.equal(pod.spec.serviceAccountName, findObject(objects, 'ServiceAccount').metadata.name);
    const c = pod.spec.containers[0];
    for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe'] as const) {
      t.same(c[probe]?.httpGet, { path: '/healthz', port: 'http' }, `${probe} on /healthz`);
    }
    t.same(c.ports, [{ name: 'http', containerPort: 8080, protocol: 'TCP' }]);

    // The args are the gateway's own flags; with the Pod's namespace substituted as the kubelet
    // does ($(POD_NAMESPACE) from the downward API), they parse and name the Service's DNS name.
    t.same(c.env.find((e) => e.name === 'POD_NAMESPACE')?.valueFrom, { fieldRef: { fieldPath: 'metadata.namespace' } });
    t.same(c.args.slice(0, 2), ['gateway', 'start']);
    const args = c.args.slice(2).map((a) => a.replace(/\$\(POD_NAMESPACE\)/g, ns));
    const config = loadConfig(args, {});
    t.equal(config.driver, 'kubernetes');
    t.equal(config.sandboxEndpoint, `http://${svc.metadata.name}.${ns}.svc:${svc.spec.ports[0].port}`, '--sandbox-endpoint = the Service DNS name');
    t.equal(config.supervisorSocket, false, 'the supervisor socket option is off');
    t.equal(config.k8sNamespace, ns);
    t.equal(config.port, 8080);
    t.equal(config.host, '0.0.0.0');
    // SQLite on the PVC.
    const pvc = findObject(objects, 'PersistentVolumeClaim');
    const stateVol = pod.spec.volumes.find((v) => v.persistentVolumeClaim?.claimName === pvc.metadata.name);
    t.ok(stateVol, 'a volume from the PVC');
    const mount = c.volumeMounts.find((m) => m.name === stateVol!.name)!;
    t.equal(config.db, `sqlite:${mount.mountPath}/openshell.db`, 'the database lives on the PVC');

    // NetworkPolicy: sandbox Pods (by the driver's label) reach the gateway on 8080, DNS,
    // and public addresses only.
    const np = findObject<NetPol>(objects, 'NetworkPolicy');
    t.same(np.spec.podSelector, { matchExpressions: [{ key: 'openshell.sandbox.id', operator: 'Exists' }] });
    t.same(np.spec.policyTypes, ['Ingress', 'Egress']);
    t.same(np.spec.ingress, [], 'nothing reaches a sandbox Pod');
    const [toGateway, toDns, toInternet] = np.spec.egress;
    t.same(toGateway.to, [{ podSelector: { matchLabels: svc.spec.selector } }], 'the gateway Pods, as the Service selects them');
    t.same(toGateway.ports, [{ port: 8080, protocol: 'TCP' }]);
    t.same(toDns.ports?.map((p) => `${p.protocol}/${p.port}`), ['UDP/53', 'TCP/53']);
    t.equal(np.spec.egress.length, 3);
    const v4 = toInternet.to.find((p) => p.ipBlock?.cidr === '0.0.0.0/0')!.ipBlock!;
    for (const range of ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10', '169.254.0.0/16', '127.0.0.0/8']) {
      t.ok(v4.except?.includes(range), `the internet rule excludes ${range}`);
    }
    t.ok(inCidr('169.254.169.254', '169.254.0.0/16'), 'cloud metadata is inside an excluded range');
    t.ok(inCidr('10.96.0.1', '10.0.0.0/8'), "this API server's Service CIDR (10.96.0.0/24) is excluded");
    t.ok(toInternet.to.find((p) => p.ipBlock?.cidr === '::/0')?.ipBlock?.except?.includes('fc00::/7'));
    t.notOk(toInternet.ports, 'any port on the internet (the in-sandbox egress proxy enforces the policy)');
  });

  t.test('the Role grants exactly the verbs the driver calls: each one taken away fails its call', async (t) => {
    const role = findObject<{ rules: V1PolicyRule[] }>(renderKustomization(), 'Role');
    const grants = role.rules.flatMap((r) => r.resources!.flatMap((res) => r.verbs.map((v) => `${res}/${v}`)));
    t.same(grants.sort(), ['pods/create', 'pods/delete', 'pods/get', 'pods/list', 'pods/watch', 'secrets/create', 'secrets/delete']);
    const namespace = 'rbac';
    await makeNamespace(k, namespace);

    let user = 0;
    let serial = 0;
    /** A driver running as a fresh user bound to the manifest's Role minus `missing`. */
    const driverWithout = async (missing: string | null): Promise<KubernetesDriver> => {
      const name = TEST_USERS[user++];
      const roleName = `gateway-minus-${(missing ?? 'nothing').replace('/', '-')}`;
      const rules = role.rules
        .map((r) => ({
          ...r,
          resources: r.resources,
          verbs: r.verbs.filter((v) => !r.resources!.some((res) => `${res}/${v}` === missing)),
        }))
        .filter((r) => r.verbs.length > 0);
      await k.rbac.createNamespacedRole({ namespace, body: { metadata: { name: roleName }, rules } });
      await k.rbac.createNamespacedRoleBinding({
        namespace,
        body: {
          metadata: { name: roleName },
          roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: roleName },
          subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name }],
        },
      });
      const d = new KubernetesDriver({
        log,
        kubeConfig: k.kubeConfig({ token: k.tokenOf(name), namespace }),
        namespace,
        supervisorImage: 'openshell:test',
        requestTimeoutMs: 10_000,
        deleteWaitMs: 5000,
      });
      t.teardown(() => d.close());
      return d;
    };
    const id = () => `sbx_rbac${(serial++).toString(16).padStart(8, '0')}`;
    const denied = (verb: string, resource: string) => new RegExp(`^PERMISSION_DENIED: .*cannot ${verb} resource "${resource}"`);

    // The whole Role: every call goes through.
    {
      const d = await driverWithout(null);
      const sid = id();
      await d.create(spec(sid));
      t.match(await d.list(), [{ id: sid, state: 'Running' }]);
      const seen = new Promise<void>((resolve) => d.watch((s) => s.id === sid && s.state === 'Gone' && resolve()));
      while (d.stats.watches === 0) await new Promise((r) => setTimeout(r, 20));
      await k.admin.deleteNamespacedPod({ name: sid.replace('_', '-'), namespace });
      await seen;
      t.equal(d.watchError, null, 'the watch runs');
      await d.create(spec(id()));
      const [again] = await d.list();
      await d.delete(again.id);
      t.same(await d.list(), [], 'full Role: create, list, watch, delete all work');
    }

    const cases: [string, (d: KubernetesDriver) => Promise<unknown>, RegExp][] = [
      ['pods/create', (d) => d.create(spec(id())), denied('create', 'pods')],
      ['secrets/create', (d) => d.create(spec(id())), denied('create', 'secrets')],
      ['pods/list', (d) => d.list(), denied('list', 'pods')],
      [
        'pods/delete',
        async (d) => {
          const sid = id();
          await d.create(spec(sid));
          return d.delete(sid);
        },
        denied('delete', 'pods'),
      ],
      [
        'secrets/delete',
        async (d) => {
          const sid = id();
          await d.create(spec(sid));
          return d.delete(sid);
        },
        denied('delete', 'secrets'),
      ],
      [
        'pods/get',
        async (d) => {
          const sid = id();
          await d.create(spec(sid));
          return d.delete(sid);
        },
        denied('get', 'pods'),
      ],
    ];
    for (const [missing, call, error] of cases) {
      const d = await driverWithout(missing);
      await t.rejects(call(d), { code: 'PERMISSION_DENIED', message: error }, `without ${missing}: ${error}`);
    }
    {
      const d = await driverWithout('pods/watch');
      d.watch(() => undefined);
      const deadline = Date.now() + 20_000;
      while (!d.watchError && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      t.match(d.watchError, { code: 'PERMISSION_DENIED', message: /^PERMISSION_DENIED: kubernetes watch pods in rbac: forbidden/ }, 'without pods/watch: the watch says why');
    }
    // secrets/create refused: the Pod made just before is taken back.
    const left = await k.admin.listNamespacedPod({ namespace, labelSelector: 'openshell.sandbox.id' });
    t.notOk(
      left.items.some((p) => p.metadata?.name === 'sbx-rbac00000003'),
      'the Pod whose Secret was refused is deleted again',
    );
  });
});

function inCidr(ip: string, cidr: string): boolean {
  const [base, bits] = cidr.split('/');
  const n = (a: string) => a.split('.').reduce((acc, x) => acc * 256 + Number(x), 0);
  const mask = 2 ** 32 - 2 ** (32 - Number(bits));
  return (n(ip) & mask) >>> 0 === (n(base) & mask) >>> 0;
}

interface Svc {
  metadata: { name: string };
  spec: { type: string; selector: Record<string, string>; ports: { name: string; port: number; targetPort: string }[] };
}
interface Probe {
  httpGet?: { path: string; port: string };
}
interface Dep {
  spec: {
    replicas: number;
    strategy: { type: string };
    template: {
      metadata: { labels: Record<string, string> };
      spec: {
        serviceAccountName: string;
        containers: {
          args: string[];
          env: { name: string; valueFrom?: unknown }[];
          ports: unknown[];
          volumeMounts: { name: string; mountPath: string }[];
          startupProbe?: Probe;
          readinessProbe?: Probe;
          livenessProbe?: Probe;
        }[];
        volumes: { name: string; persistentVolumeClaim?: { claimName: string } }[];
      };
    };
  };
}
interface NetPol {
  spec: {
    podSelector: unknown;
    policyTypes: string[];
    ingress: unknown[];
    egress: {
      to: { podSelector?: unknown; namespaceSelector?: unknown; ipBlock?: { cidr: string; except?: string[] } }[];
      ports?: { port: number; protocol: string }[];
    }[];
  };
}

// Renders deploy/kubernetes the way `kubectl apply -k` would, for the features the base
// uses (resources, namespace, images); anything else in kustomization.yaml fails loudly,
// so the tests never pass on a rendering that kubectl would not produce.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments, parse } from 'yaml';
import { packageRoot } from '../src/paths.js';

export const DEPLOY_DIR = join(packageRoot(), 'deploy', 'kubernetes');

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; [k: string]: unknown };
  [k: string]: unknown;
}

interface Kustomization {
  apiVersion?: string;
  kind?: string;
  namespace?: string;
  resources?: string[];
  images?: { name: string; newName?: string; newTag?: string }[];
}

const CLUSTER_SCOPED = new Set(['Namespace', 'ClusterRole', 'ClusterRoleBinding', 'PersistentVolume', 'StorageClass']);

/** The base's objects, with `namespace` (default: the kustomization's) set on namespaced objects and subjects. */
export function renderKustomization(dir = DEPLOY_DIR, namespace?: string): K8sObject[] {
  const k = parse(readFileSync(join(dir, 'kustomization.yaml'), 'utf8')) as Kustomization;
  const known = new Set(['apiVersion', 'kind', 'namespace', 'resources', 'images']);
  for (const key of Object.keys(k)) {
    if (!known.has(key)) throw new Error(`kustomization.yaml: "${key}" is not rendered by test/helpers/kustomize.ts`);
  }
  const ns = namespace ?? k.namespace;
  const objects: K8sObject[] = [];
  for (const file of k.resources ?? []) {
    for (const doc of parseAllDocuments(readFileSync(join(dir, file), 'utf8'))) {
      const obj = doc.toJS() as K8sObject | null;
      if (obj) objects.push(obj);
    }
  }
  for (const obj of objects) {
    if (!ns) continue;
    if (obj.kind === 'Namespace') obj.metadata.name = ns;
    else if (!CLUSTER_SCOPED.has(obj.kind)) obj.metadata.namespace = ns;
    // kustomize's namespace transformer also rewrites ServiceAccount subjects of bindings.
    if (obj.kind === 'RoleBinding' || obj.kind === 'ClusterRoleBinding') {
      for (const s of (obj.subjects as { kind: string; namespace?: string }[]) ?? []) if (s.kind === 'ServiceAccount') s.namespace = ns;
    }
  }
  for (const img of k.images ?? []) {
    for (const obj of objects) {
      const spec = (obj.spec as { template?: { spec?: PodLike } } | undefined)?.template?.spec;
      for (const c of [...(spec?.containers ?? []), ...(spec?.initContainers ?? [])]) {
        const [name] = c.image.split(':');
        if (name === img.name) c.image = `${img.newName ?? img.name}${img.newTag ? `:${img.newTag}` : ''}`;
      }
    }
  }
  return objects;
}

interface PodLike {
  containers?: { image: string }[];
  initContainers?: { image: string }[];
}

export function findObject<T = K8sObject>(objects: K8sObject[], kind: string, name?: string): T {
  const o = objects.find((x) => x.kind === kind && (name === undefined || x.metadata.name === name));
  if (!o) throw new Error(`deploy/kubernetes has no ${kind}${name ? ` ${name}` : ''}`);
  return o as T;
}

/** The local kube-apiserver lives in bench/ (the Kubernetes benchmark uses it too); tests use the same code. */
export * from '../../bench/k8s-apiserver.js';

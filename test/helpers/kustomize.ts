/** The kustomize renderer lives in bench/ beside the local API server; tests use the same code. */
export * from '../../bench/kustomize.js';

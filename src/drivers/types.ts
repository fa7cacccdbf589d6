import type { Resources } from '../schemas/sandbox.js';

/** What a driver needs to start one sandbox workload. */
export interface SandboxSpec {
  id: string;
  name: string;
  image: string | null;
  /** The agent's entrypoint, started by the supervisor; empty = none. */
  command: string[];
  env: Record<string, string>;
  /** The sandbox's secret, handed to its supervisor only. */
  token: string;
  /** The URL the supervisor dials. */
  endpoint: string;
  /** Enforced limits (container limits, or the supervisor's cgroup on the host). */
  resources: Resources;
}

/** The backend's view of one workload. */
export interface BackendState {
  id: string;
  state: 'Running' | 'Error' | 'Gone';
  message: string;
}

/**
 * A compute backend (process, Docker, Kubernetes). Drivers only start, stop
 * and observe workloads; readiness belongs to the gateway's session registry.
 */
export interface ComputeDriver {
  readonly name: string;
  create(spec: SandboxSpec): Promise<void>;
  /** Stops the workload and removes what it left; resolves once it is gone. Idempotent. */
  delete(id: string): Promise<void>;
  list(): Promise<BackendState[]>;
  /** Subscribes to state changes (a workload dying, going away); returns the unsubscribe. */
  watch(listener: (state: BackendState) => void): () => void;
  close(): Promise<void>;
}

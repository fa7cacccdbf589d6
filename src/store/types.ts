import type { Condition, MainProcess, Phase, Resources } from '../schemas/sandbox.js';

/** A sandbox as persisted: the API view plus what only the gateway sees. */
export interface SandboxRecord {
  id: string;
  name: string;
  driver: string;
  image: string | null;
  command: string[];
  env: Record<string, string>;
  labels: Record<string, string>;
  policy: unknown;
  policyVersion: number;
  /** sha256 of the sandbox's token; the token itself is never stored. */
  tokenHash: string;
  phase: Phase;
  condition: Condition;
  /** The `Isolated` condition, once the supervisor reported its confinement (absent before). */
  isolated?: Condition | null;
  mainProcess: MainProcess;
  /** Enforced limits asked for at create (absent in records written before they existed). */
  resources?: Resources;
  createdAt: string;
  expiresAt: string | null;
  /** Bumped by every write; updates are compare-and-set on it. */
  resourceVersion: number;
}

export interface ListFilter {
  labels?: Record<string, string>;
}

/**
 * Persistence behind one interface (SQLite now, Postgres later). Async so a
 * networked store fits. `update` is compare-and-set: it writes only when the
 * stored `resourceVersion` still equals `expectedVersion`, and returns null
 * when another writer got there first.
 */
export interface SandboxStore {
  insert(record: Omit<SandboxRecord, 'resourceVersion'>): Promise<SandboxRecord>;
  get(id: string): Promise<SandboxRecord | null>;
  getByName(name: string): Promise<SandboxRecord | null>;
  getByTokenHash(tokenHash: string): Promise<SandboxRecord | null>;
  list(filter?: ListFilter): Promise<SandboxRecord[]>;
  update(
    id: string,
    expectedVersion: number,
    patch: Partial<Omit<SandboxRecord, 'id' | 'resourceVersion'>>,
  ): Promise<SandboxRecord | null>;
  delete(id: string): Promise<boolean>;
  close(): Promise<void>;
}

/** Thrown by `insert` when the name (or id) is taken. */
export class DuplicateError extends Error {
  override name = 'DuplicateError';
}

import { SqliteStore } from './sqlite.js';
import type { SandboxStore } from './types.js';

export type { SandboxRecord, SandboxStore, ListFilter } from './types.js';
export { DuplicateError } from './types.js';

/** Opens the store a `--db` URL names: `sqlite:<path>`, `sqlite::memory:`; `postgres://` comes later. */
export function openStore(url: string): SandboxStore {
  if (url.startsWith('sqlite:')) return new SqliteStore(url.slice('sqlite:'.length));
  if (url.startsWith('postgres://') || url.startsWith('postgresql://')) {
    throw new Error('--db postgres:// is not supported yet; use sqlite:<path> (the default)');
  }
  throw new Error(`--db: unsupported store URL "${url}" (expected sqlite:<path> or sqlite::memory:)`);
}

/** Whether the store a `--db` URL names dies with the gateway (nothing can adopt its sandboxes later). */
export function isInMemoryStore(url: string): boolean {
  return url === 'sqlite::memory:' || url === 'sqlite:';
}

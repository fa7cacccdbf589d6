import { chmodSync, closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { DuplicateError, type ListFilter, type SandboxRecord, type SandboxStore } from './types.js';

interface Row {
  data: string;
  resource_version: number;
}

/** The embedded default store: one SQLite file (mode 0600) or `:memory:`. */
export class SqliteStore implements SandboxStore {
  readonly #db: Database.Database;
  readonly #stmts;

  constructor(path: string) {
    if (path !== ':memory:') {
      mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
      // Create the file 0600 before SQLite opens it, so it never exists world-readable.
      closeSync(openSync(path, 'a', 0o600));
      chmodSync(path, 0o600);
    }
    this.#db = new Database(path);
    this.#db.pragma('journal_mode = WAL');
    this.#db.pragma('synchronous = NORMAL');
    this.#db.exec(`CREATE TABLE IF NOT EXISTS sandboxes (
      id TEXT PRIMARY KEY,
      name TEXT NOT NULL UNIQUE,
      token_hash TEXT NOT NULL UNIQUE,
      resource_version INTEGER NOT NULL,
      data TEXT NOT NULL
    )`);
    this.#stmts = {
      insert: this.#db.prepare(
        'INSERT INTO sandboxes (id, name, token_hash, resource_version, data) VALUES (?, ?, ?, 1, ?)',
      ),
      get: this.#db.prepare<[string], Row>('SELECT data, resource_version FROM sandboxes WHERE id = ?'),
      byName: this.#db.prepare<[string], Row>('SELECT data, resource_version FROM sandboxes WHERE name = ?'),
      byToken: this.#db.prepare<[string], Row>('SELECT data, resource_version FROM sandboxes WHERE token_hash = ?'),
      list: this.#db.prepare<[], Row>('SELECT data, resource_version FROM sandboxes ORDER BY rowid'),
      update: this.#db.prepare(
        'UPDATE sandboxes SET data = ?, name = ?, token_hash = ?, resource_version = resource_version + 1 WHERE id = ? AND resource_version = ?',
      ),
      delete: this.#db.prepare('DELETE FROM sandboxes WHERE id = ?'),
    };
  }

  async insert(record: Omit<SandboxRecord, 'resourceVersion'>): Promise<SandboxRecord> {
    const full: SandboxRecord = { ...record, resourceVersion: 1 };
    try {
      this.#stmts.insert.run(full.id, full.name, full.tokenHash, serialize(full));
    } catch (err) {
      if ((err as { code?: string }).code?.startsWith('SQLITE_CONSTRAINT')) {
        throw new DuplicateError(`sandbox "${record.name}" already exists`, { cause: err });
      }
      throw err;
    }
    return full;
  }

  async get(id: string): Promise<SandboxRecord | null> {
    return parse(this.#stmts.get.get(id));
  }

  async getByName(name: string): Promise<SandboxRecord | null> {
    return parse(this.#stmts.byName.get(name));
  }

  async getByTokenHash(tokenHash: string): Promise<SandboxRecord | null> {
    return parse(this.#stmts.byToken.get(tokenHash));
  }

  async list(filter: ListFilter = {}): Promise<SandboxRecord[]> {
    const all = this.#stmts.list.all().map((row) => parse(row) as SandboxRecord);
    const labels = Object.entries(filter.labels ?? {});
    if (labels.length === 0) return all;
    return all.filter((s) => labels.every(([k, v]) => s.labels[k] === v));
  }

  async update(
    id: string,
    expectedVersion: number,
    patch: Partial<Omit<SandboxRecord, 'id' | 'resourceVersion'>>,
  ): Promise<SandboxRecord | null> {
    // One transaction: read, merge, compare-and-set. SQLite serialises writers,
    // and the version check makes a concurrent writer's update lose cleanly.
    const tx = this.#db.transaction((): SandboxRecord | null => {
      const current = parse(this.#stmts.get.get(id));
      if (!current || current.resourceVersion !== expectedVersion) return null;
      const next: SandboxRecord = { ...current, ...patch, id, resourceVersion: expectedVersion + 1 };
      const info = this.#stmts.update.run(serialize(next), next.name, next.tokenHash, id, expectedVersion);
      return info.changes === 1 ? next : null;
    });
    return tx();
  }

  async delete(id: string): Promise<boolean> {
    return this.#stmts.delete.run(id).changes === 1;
  }

  async close(): Promise<void> {
    if (this.#db.open) this.#db.close();
  }
}

function serialize(record: SandboxRecord): string {
  const { resourceVersion: _version, ...data } = record;
  return JSON.stringify(data);
}

function parse(row: Row | undefined): SandboxRecord | null {
  if (!row) return null;
  return { ...(JSON.parse(row.data) as Omit<SandboxRecord, 'resourceVersion'>), resourceVersion: row.resource_version };
}

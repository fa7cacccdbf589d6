/**
 * The logger shape every domain module takes. Fastify's pino logger and
 * `pino()` both satisfy it; domain code never imports Fastify.
 */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
  child(bindings: Record<string, unknown>): Logger;
}

/**
 * Where a `JsonText` can write its JSON as UTF-8 bytes, piece by piece, into
 * the line being built (the supervisor's logger): bytes it keeps between
 * calls go in as they are, without building and encoding a string.
 */
export interface JsonBytes {
  /** UTF-8 JSON text, as it is. */
  bytes(b: Uint8Array): void;
  /** JSON text, encoded. */
  text(s: string): void;
  /** `s` as a JSON string: quoted and escaped as JSON.stringify does. */
  string(s: string): void;
}

/**
 * A log field value that builds its own JSON text, for a hot path that can
 * do it cheaper than JSON.stringify (the egress proxy's decision per L7
 * request). The supervisor's logger writes it into the line (`writeJson`),
 * only for a line it writes; pino and JSON.stringify use `toJSON`. The text
 * is not redacted: it must hold no secrets.
 */
export abstract class JsonText {
  /** The value as JSON text. */
  abstract json(): string;

  /** Writes the same text as `json()`; a subclass can write kept bytes instead. */
  writeJson(out: JsonBytes): void {
    out.text(this.json());
  }

  toJSON(): unknown {
    return JSON.parse(this.json()) as unknown;
  }
}

/** Secrets never reach a log line: pino redaction paths used by every logger we build. */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'headers.authorization',
  'authorization',
  'token',
  'sandboxToken',
  '*.token',
];

/** A logger that drops everything (tests and library callers that pass none). */
export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
  child() {
    return silentLogger;
  },
};

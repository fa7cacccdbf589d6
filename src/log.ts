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
 * A log field value that builds its own JSON text, for a hot path that can
 * do it cheaper than JSON.stringify (the egress proxy's decision per L7
 * request). The supervisor's logger splices `json()` into the line, calling
 * it only for a line it writes; pino and JSON.stringify use `toJSON`. The
 * text is not redacted: it must hold no secrets.
 */
export abstract class JsonText {
  /** The value as JSON text. */
  abstract json(): string;

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

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

/**
 * The error catalogue: stable codes (DESIGN.md), their HTTP status, and one
 * class that domain code throws. Routes never catch these; one error handler
 * renders `{"error":{"code","message","details"}}`.
 */
export const ErrorCodes = {
  INVALID_ARGUMENT: 400,
  UNAUTHENTICATED: 401,
  PERMISSION_DENIED: 403,
  SANDBOX_NOT_FOUND: 404,
  EXEC_NOT_FOUND: 404,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  CONFLICT: 409,
  OUTPUT_EXPIRED: 410,
  PAYLOAD_TOO_LARGE: 413,
  RESOURCE_EXHAUSTED: 429,
  INTERNAL: 500,
  SESSION_UNAVAILABLE: 503,
  SANDBOX_NOT_READY: 503,
  RELAY_LOST: 502,
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

export class OpenShellError extends Error {
  readonly code: ErrorCode;
  readonly statusCode: number;
  readonly details: unknown;

  constructor(code: ErrorCode, message: string, options: { details?: unknown; cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.name = 'OpenShellError';
    this.code = code;
    this.statusCode = ErrorCodes[code];
    this.details = options.details;
  }
}

/** 400 naming the offending field, e.g. `invalidArgument('name', 'must be a DNS-1123 label')`. */
export function invalidArgument(field: string, message: string): OpenShellError {
  return new OpenShellError('INVALID_ARGUMENT', `${field}: ${message}`, { details: { field } });
}

export function sandboxNotFound(name: string): OpenShellError {
  return new OpenShellError('SANDBOX_NOT_FOUND', `sandbox "${name}" not found`, { details: { name } });
}

export function isOpenShellError(err: unknown): err is OpenShellError {
  return err instanceof OpenShellError;
}

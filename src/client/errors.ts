import type { ErrorEnvelope } from '../schemas/sandbox.js';

/** An error answered by the gateway, built from its `{"error":{code,message,details}}` envelope. */
export class OpenShellApiError extends Error {
  override name = 'OpenShellApiError';
  readonly status: number;
  readonly code: string;
  readonly details: unknown;

  constructor(status: number, code: string, message: string, details?: unknown) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }

  /** Builds the error from a response body; a body that is not the envelope still gives a useful message. */
  static fromBody(status: number, statusText: string, body: string): OpenShellApiError {
    try {
      const parsed = JSON.parse(body) as Partial<ErrorEnvelope>;
      const e = parsed.error;
      if (e && typeof e.code === 'string' && typeof e.message === 'string') {
        return new OpenShellApiError(status, e.code, e.message, e.details);
      }
    } catch {
      // not JSON: fall through
    }
    const text = body.trim().slice(0, 200);
    return new OpenShellApiError(status, `HTTP_${status}`, `HTTP ${status} ${statusText}${text ? `: ${text}` : ''}`);
  }
}

/** The gateway could not be reached at all (connection refused, DNS, TLS, reset). */
export class OpenShellConnectionError extends Error {
  override name = 'OpenShellConnectionError';
  readonly code: string;
  readonly baseUrl: string;

  constructor(baseUrl: string, code: string, detail: string, options: { cause?: unknown } = {}) {
    super(`cannot reach the gateway at ${baseUrl}: ${detail}`, options);
    this.code = code;
    this.baseUrl = baseUrl;
  }
}

/** `waitForReady` gave up: the sandbox reached `Error`, was deleted, or the timeout passed. */
export class SandboxWaitError extends Error {
  override name = 'SandboxWaitError';
  readonly phase: string | undefined;
  readonly reason: string | undefined;

  constructor(message: string, phase?: string, reason?: string) {
    super(message);
    this.phase = phase;
    this.reason = reason;
  }
}

/** Turns what `fetch` throws on a network failure into a message that names the gateway. */
export function connectionError(baseUrl: string, err: unknown): OpenShellConnectionError {
  const cause = (err as { cause?: unknown }).cause ?? err;
  const codeOf = (e: unknown): string | undefined => (e as { code?: unknown })?.code as string | undefined;
  let code = codeOf(cause);
  // Happy-eyeballs failures arrive as an AggregateError whose members carry the code.
  if (!code && cause instanceof AggregateError) code = cause.errors.map(codeOf).find(Boolean);
  const message = (cause as Error)?.message;
  const detail = code ?? (message || String(cause));
  return new OpenShellConnectionError(baseUrl, code ?? 'ECONNECT', detail, { cause: err });
}

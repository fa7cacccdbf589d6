import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { ErrorCodes, isOpenShellError, type ErrorCode } from '../errors.js';

interface ValidationIssue {
  instancePath: string;
  keyword: string;
  params: Record<string, unknown>;
  message?: string;
}

/** Renders every error as DESIGN.md's envelope; 5xx internals are logged, never shown. */
export function errorHandler(err: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const { code, status, message, details } = classify(err);
  if (status >= 500) request.log.error({ err }, 'request failed');
  void reply
    .code(status)
    .type('application/json')
    .send({ error: { code, message, ...(details === undefined ? {} : { details }) } });
}

function classify(err: FastifyError): { code: ErrorCode; status: number; message: string; details?: unknown } {
  if (isOpenShellError(err)) return { code: err.code, status: err.statusCode, message: err.message, details: err.details };
  if (err.validation) {
    const issue = err.validation[0] as ValidationIssue;
    const field = fieldOf(err.validationContext ?? 'body', issue);
    return {
      code: 'INVALID_ARGUMENT',
      status: 400,
      message: `${field}: ${describe(issue)}`,
      details: { field },
    };
  }
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return { code: 'PAYLOAD_TOO_LARGE', status: 413, message: 'request body is too large' };
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return { code: 'INVALID_ARGUMENT', status: 400, message: 'content-type: expected application/json', details: { field: 'content-type' } };
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return { code: 'INVALID_ARGUMENT', status: 400, message: 'body: empty JSON body', details: { field: 'body' } };
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return { code: 'INVALID_ARGUMENT', status: 400, message: 'content-length: does not match the body', details: { field: 'content-length' } };
  }
  if (err instanceof SyntaxError || err.code === 'FST_ERR_CTP_INVALID_JSON_BODY') {
    return { code: 'INVALID_ARGUMENT', status: 400, message: `body: invalid JSON (${err.message})`, details: { field: 'body' } };
  }
  const status = err.statusCode ?? 500;
  if (status === 404) return { code: 'NOT_FOUND', status, message: err.message };
  if (status === 401) return { code: 'UNAUTHENTICATED', status, message: err.message };
  if (status === 413) return { code: 'PAYLOAD_TOO_LARGE', status, message: 'request body is too large' };
  if (status >= 400 && status < 500) return { code: 'INVALID_ARGUMENT', status, message: err.message };
  return { code: 'INTERNAL', status: ErrorCodes.INTERNAL, message: 'internal error' };
}

/** `body`, `/labels/Foo` → `body.labels.Foo`; a missing property is named itself. */
function fieldOf(context: string, issue: ValidationIssue): string {
  const parts = issue.instancePath.split('/').filter(Boolean);
  if (issue.keyword === 'required' && typeof issue.params.missingProperty === 'string') {
    parts.push(issue.params.missingProperty);
  }
  if (issue.keyword === 'additionalProperties' && typeof issue.params.additionalProperty === 'string') {
    parts.push(issue.params.additionalProperty);
  }
  if (issue.keyword === 'propertyNames' && typeof issue.params.propertyName === 'string') {
    parts.push(issue.params.propertyName);
  }
  return [context, ...parts].join('.');
}

function describe(issue: ValidationIssue): string {
  if (issue.keyword === 'additionalProperties') return 'unknown field';
  if (issue.keyword === 'pattern' && typeof issue.params.pattern === 'string') {
    return `must match ${issue.params.pattern}`;
  }
  return issue.message ?? 'invalid';
}

/** 404 for unknown routes, in the same envelope. */
export function notFoundHandler(request: FastifyRequest, reply: FastifyReply): void {
  void reply
    .code(404)
    .send({ error: { code: 'NOT_FOUND', message: `route ${request.method} ${request.url.split('?')[0]} not found` } });
}

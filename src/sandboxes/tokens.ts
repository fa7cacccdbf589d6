import { createHash, randomBytes } from 'node:crypto';

/** A sandbox's secret: handed to its supervisor once, stored only as a hash. */
export function generateToken(): string {
  return `ost_${randomBytes(32).toString('base64url')}`;
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/** Extracts the bearer token of an `Authorization` header, or null. */
export function bearerToken(header: string | string[] | undefined): string | null {
  if (typeof header !== 'string') return null;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match ? match[1] : null;
}

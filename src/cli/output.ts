import type { Writable } from 'node:stream';
import type { Sandbox } from '../schemas/sandbox.js';

export type OutputFormat = 'json' | 'table';

/** Writes a value as the API returned it: one JSON document per line. */
export function printJson(out: Writable, value: unknown): void {
  out.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Left-aligned columns separated by three spaces, like kubectl. */
export function renderTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i])))
      .join('   ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

/** `5s`, `3m`, `2h`, `4d` since `iso`. */
export function age(iso: string, now = Date.now()): string {
  const seconds = Math.max(0, Math.floor((now - Date.parse(iso)) / 1000));
  if (!Number.isFinite(seconds)) return '?';
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 7200) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 172_800) return `${Math.floor(seconds / 3600)}h`;
  return `${Math.floor(seconds / 86_400)}d`;
}

export function formatLabels(labels: Record<string, string>): string {
  const pairs = Object.entries(labels).map(([k, v]) => `${k}=${v}`);
  return pairs.length ? pairs.join(',') : '<none>';
}

function readyReason(s: Sandbox): string {
  return s.conditions.find((c) => c.type === 'Ready')?.reason ?? '';
}

/** The `sandbox list` table. */
export function sandboxTable(sandboxes: Sandbox[]): string {
  if (sandboxes.length === 0) return 'No sandboxes.\n';
  return renderTable(
    ['NAME', 'PHASE', 'REASON', 'DRIVER', 'IMAGE', 'AGE', 'LABELS'],
    sandboxes.map((s) => [s.name, s.phase, readyReason(s), s.driver, s.image ?? '-', age(s.createdAt), formatLabels(s.labels)]),
  );
}

/** The `sandbox get` / `create` view: one field per line. */
export function sandboxDetail(s: Sandbox): string {
  const ready = s.conditions.find((c) => c.type === 'Ready');
  const main = s.mainProcess;
  const fields: Array<[string, string]> = [
    ['Name', s.name],
    ['ID', s.id],
    ['Phase', s.phase],
    ['Ready', ready ? `${ready.status} (${ready.reason}${ready.message ? `: ${ready.message}` : ''})` : '-'],
    ['Driver', s.driver],
    ['Image', s.image ?? '-'],
    ['Command', s.command.length ? s.command.map(shellQuote).join(' ') : '-'],
    ['Main process', main ? `${main.state}${main.exitCode !== null ? ` (exit ${main.exitCode})` : ''}${main.signal ? ` (${main.signal})` : ''}` : '-'],
    ['Labels', formatLabels(s.labels)],
    ['Policy version', String(s.policyVersion)],
    ['Created', `${s.createdAt} (${age(s.createdAt)} ago)`],
    ['Expires', s.expiresAt ?? '-'],
  ];
  const width = Math.max(...fields.map(([k]) => k.length)) + 1;
  return fields.map(([k, v]) => `${`${k}:`.padEnd(width)} ${v}`).join('\n') + '\n';
}

/** Quotes an argument for display (and for ssh-config ProxyCommand lines, run by a POSIX shell). */
export function shellQuote(arg: string): string {
  if (arg !== '' && /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg)) return arg;
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

import { readFileSync } from 'node:fs';
import { userInfo } from 'node:os';

/** A local account, as the exec registry needs it to switch user. */
export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
  shell: string;
}

/** Parses passwd(5) text; malformed lines are skipped. */
export function parsePasswd(text: string): PasswdEntry[] {
  const out: PasswdEntry[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const f = line.split(':');
    if (f.length < 7) continue;
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (!Number.isInteger(uid) || !Number.isInteger(gid)) continue;
    out.push({ name: f[0]!, uid, gid, home: f[5]!, shell: f[6]! });
  }
  return out;
}

/**
 * Resolves a user name or numeric uid from /etc/passwd. A numeric uid with no
 * entry resolves to itself (gid = uid, home `/`), as container runtimes do.
 */
export function lookupUser(user: string, passwdPath = '/etc/passwd'): PasswdEntry | null {
  let entries: PasswdEntry[] = [];
  try {
    entries = parsePasswd(readFileSync(passwdPath, 'utf8'));
  } catch {
    // no passwd file: only numeric ids can resolve
  }
  const numeric = /^\d+$/.test(user) ? Number(user) : null;
  const found = entries.find((e) => (numeric === null ? e.name === user : e.uid === numeric));
  if (found) return found;
  if (numeric !== null) return { name: user, uid: numeric, gid: numeric, home: '/', shell: '/bin/sh' };
  return null;
}

/** The account this process runs as. */
export function currentUser(): PasswdEntry {
  const info = userInfo();
  return { name: info.username, uid: info.uid, gid: info.gid, home: info.homedir, shell: info.shell ?? '/bin/sh' };
}

/** True when this process may switch to another uid. */
export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

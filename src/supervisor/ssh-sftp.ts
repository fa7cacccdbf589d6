import { constants as fsConstants, type Stats } from 'node:fs';
import { chmod, chown, lstat, mkdir, open, readdir, readlink, realpath, rename, rmdir, stat, truncate, unlink, utimes, type FileHandle } from 'node:fs/promises';
import { resolve } from 'node:path';
import ssh2 from 'ssh2';
import type { Attributes, SFTPWrapper } from 'ssh2';
import type { Logger } from '../log.js';

const { OPEN_MODE, STATUS_CODE } = ssh2.utils.sftp;
/** Entries per NAME reply: keeps each packet well under the 34000-byte SFTP limit. */
const DIR_BATCH = 64;
const MAX_READ = 256 * 1024;

type Handle =
  | { kind: 'file'; fh: FileHandle; path: string }
  | { kind: 'dir'; path: string; entries: string[] | null };

/**
 * Serves one SFTP v3 session (ssh2's server-side SFTP stream) on the local file
 * system, as the supervisor's user: enough for OpenSSH `sftp` and `scp -s`.
 * Relative paths are resolved against `cwd`.
 */
export function serveSftp(sftp: SFTPWrapper, opts: { cwd: string; log: Logger }): void {
  const handles = new Map<number, Handle>();
  let nextId = 1;
  const abs = (p: string): string => resolve(opts.cwd, p === '' ? '.' : p);

  const newHandle = (h: Handle): Buffer => {
    const id = nextId++;
    handles.set(id, h);
    const buf = Buffer.alloc(4);
    buf.writeUInt32BE(id);
    return buf;
  };
  const getHandle = (b: Buffer): [number, Handle | undefined] => {
    if (b.length !== 4) return [0, undefined];
    const id = b.readUInt32BE(0);
    return [id, handles.get(id)];
  };

  const fail = (reqId: number, err: unknown): void => {
    const code = (err as NodeJS.ErrnoException).code;
    const status =
      code === 'ENOENT' || code === 'ENOTDIR'
        ? STATUS_CODE.NO_SUCH_FILE
        : code === 'EACCES' || code === 'EPERM'
          ? STATUS_CODE.PERMISSION_DENIED
          : STATUS_CODE.FAILURE;
    sftp.status(reqId, status, (err as Error).message);
  };
  /** Runs an async request; any thrown errno becomes a status reply. */
  const handle = <A extends unknown[]>(event: string, fn: (reqId: number, ...args: A) => Promise<void>): void => {
    sftp.on(event, (reqId: number, ...args: A) => {
      fn(reqId, ...args).catch((err: unknown) => fail(reqId, err));
    });
  };
  const ok = (reqId: number): void => {
    sftp.status(reqId, STATUS_CODE.OK);
  };

  handle('OPEN', async (reqId, filename: string, flags: number, attrs: Attributes) => {
    let f = 0;
    const r = (flags & OPEN_MODE.READ) !== 0;
    const w = (flags & OPEN_MODE.WRITE) !== 0;
    f |= r && w ? fsConstants.O_RDWR : w ? fsConstants.O_WRONLY : fsConstants.O_RDONLY;
    if (flags & OPEN_MODE.APPEND) f |= fsConstants.O_APPEND;
    if (flags & OPEN_MODE.CREAT) f |= fsConstants.O_CREAT;
    if (flags & OPEN_MODE.TRUNC) f |= fsConstants.O_TRUNC;
    if (flags & OPEN_MODE.EXCL) f |= fsConstants.O_EXCL;
    const mode = typeof attrs?.mode === 'number' ? attrs.mode & 0o7777 : 0o644;
    const path = abs(filename);
    const fh = await open(path, f, mode);
    sftp.handle(reqId, newHandle({ kind: 'file', fh, path }));
  });

  handle('READ', async (reqId, hb: Buffer, offset: number, len: number) => {
    const [, h] = getHandle(hb);
    if (h?.kind !== 'file') return void sftp.status(reqId, STATUS_CODE.FAILURE, 'invalid handle');
    const buf = Buffer.allocUnsafe(Math.min(len, MAX_READ));
    const { bytesRead } = await h.fh.read(buf, 0, buf.length, offset);
    if (bytesRead === 0) sftp.status(reqId, STATUS_CODE.EOF);
    else sftp.data(reqId, bytesRead === buf.length ? buf : buf.subarray(0, bytesRead));
  });

  handle('WRITE', async (reqId, hb: Buffer, offset: number, data: Buffer) => {
    const [, h] = getHandle(hb);
    if (h?.kind !== 'file') return void sftp.status(reqId, STATUS_CODE.FAILURE, 'invalid handle');
    let n = 0;
    while (n < data.length) n += (await h.fh.write(data, n, data.length - n, offset + n)).bytesWritten;
    ok(reqId);
  });

  handle('CLOSE', async (reqId, hb: Buffer) => {
    const [id, h] = getHandle(hb);
    if (!h) return void sftp.status(reqId, STATUS_CODE.FAILURE, 'invalid handle');
    handles.delete(id);
    if (h.kind === 'file') await h.fh.close();
    ok(reqId);
  });

  handle('FSTAT', async (reqId, hb: Buffer) => {
    const [, h] = getHandle(hb);
    if (!h) return void sftp.status(reqId, STATUS_CODE.FAILURE, 'invalid handle');
    sftp.attrs(reqId, toAttrs(h.kind === 'file' ? await h.fh.stat() : await stat(h.path)));
  });
  handle('STAT', async (reqId, path: string) => void sftp.attrs(reqId, toAttrs(await stat(abs(path)))));
  handle('LSTAT', async (reqId, path: string) => void sftp.attrs(reqId, toAttrs(await lstat(abs(path)))));

  handle('FSETSTAT', async (reqId, hb: Buffer, attrs: Attributes) => {
    const [, h] = getHandle(hb);
    if (!h) return void sftp.status(reqId, STATUS_CODE.FAILURE, 'invalid handle');
    await applyAttrs(h.path, attrs);
    ok(reqId);
  });
  handle('SETSTAT', async (reqId, path: string, attrs: Attributes) => {
    await applyAttrs(abs(path), attrs);
    ok(reqId);
  });

  handle('OPENDIR', async (reqId, path: string) => {
    const p = abs(path);
    if (!(await stat(p)).isDirectory()) throw Object.assign(new Error(`${p}: not a directory`), { code: 'ENOTDIR' });
    sftp.handle(reqId, newHandle({ kind: 'dir', path: p, entries: null }));
  });

  handle('READDIR', async (reqId, hb: Buffer) => {
    const [, h] = getHandle(hb);
    if (h?.kind !== 'dir') return void sftp.status(reqId, STATUS_CODE.FAILURE, 'invalid handle');
    h.entries ??= ['.', '..', ...(await readdir(h.path))];
    if (h.entries.length === 0) return void sftp.status(reqId, STATUS_CODE.EOF);
    const batch = h.entries.splice(0, DIR_BATCH);
    const names = [];
    for (const name of batch) {
      try {
        const st = await lstat(resolve(h.path, name));
        names.push({ filename: name, longname: longname(name, st), attrs: toAttrs(st) });
      } catch {
        // vanished between readdir and lstat
      }
    }
    sftp.name(reqId, names);
  });

  handle('REALPATH', async (reqId, path: string) => {
    const p = abs(path);
    const real = await realpath(p).catch(() => p);
    sftp.name(reqId, [{ filename: real, longname: real, attrs: {} as Attributes }]);
  });
  handle('READLINK', async (reqId, path: string) => {
    const target = await readlink(abs(path));
    sftp.name(reqId, [{ filename: target, longname: target, attrs: {} as Attributes }]);
  });

  handle('MKDIR', async (reqId, path: string, attrs: Attributes) => {
    await mkdir(abs(path), { mode: typeof attrs?.mode === 'number' ? attrs.mode & 0o7777 : 0o755 });
    ok(reqId);
  });
  handle('RMDIR', async (reqId, path: string) => {
    await rmdir(abs(path));
    ok(reqId);
  });
  handle('REMOVE', async (reqId, path: string) => {
    await unlink(abs(path));
    ok(reqId);
  });
  handle('RENAME', async (reqId, from: string, to: string) => {
    await rename(abs(from), abs(to));
    ok(reqId);
  });
  sftp.on('SYMLINK', (reqId: number) => sftp.status(reqId, STATUS_CODE.OP_UNSUPPORTED));
  sftp.on('EXTENDED', (reqId: number) => sftp.status(reqId, STATUS_CODE.OP_UNSUPPORTED));

  const cleanup = (): void => {
    for (const h of handles.values()) if (h.kind === 'file') void h.fh.close().catch(() => {});
    handles.clear();
  };
  sftp.on('close', cleanup);
  sftp.on('end', cleanup);
  sftp.on('error', (err: Error) => opts.log.debug({ err }, 'sftp stream error'));
}

function toAttrs(st: Stats): Attributes {
  return {
    mode: st.mode,
    uid: st.uid,
    gid: st.gid,
    size: st.size,
    atime: Math.floor(st.atimeMs / 1000),
    mtime: Math.floor(st.mtimeMs / 1000),
  };
}

async function applyAttrs(path: string, attrs: Partial<Attributes> | undefined): Promise<void> {
  if (!attrs) return;
  if (typeof attrs.size === 'number') await truncate(path, attrs.size);
  if (typeof attrs.uid === 'number' && typeof attrs.gid === 'number') await chown(path, attrs.uid, attrs.gid);
  if (typeof attrs.mode === 'number') await chmod(path, attrs.mode & 0o7777);
  if (typeof attrs.atime === 'number' && typeof attrs.mtime === 'number') await utimes(path, attrs.atime, attrs.mtime);
}

/** An `ls -l` line, which OpenSSH `sftp` shows for `ls -l`. */
function longname(name: string, st: Stats): string {
  const type = st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'l' : st.isFIFO() ? 'p' : st.isSocket() ? 's' : '-';
  const rwx = (m: number): string => `${m & 4 ? 'r' : '-'}${m & 2 ? 'w' : '-'}${m & 1 ? 'x' : '-'}`;
  const perms = `${type}${rwx(st.mode >> 6)}${rwx(st.mode >> 3)}${rwx(st.mode)}`;
  const d = st.mtime;
  const month = d.toLocaleString('en-US', { month: 'short' });
  const time = `${month} ${String(d.getDate()).padStart(2)} ${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
  return `${perms} ${String(st.nlink).padStart(3)} ${String(st.uid).padEnd(8)} ${String(st.gid).padEnd(8)} ${String(st.size).padStart(8)} ${time} ${name}`;
}

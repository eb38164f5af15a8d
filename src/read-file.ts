// Reads a file the user named (settings, credentials, a kubeconfig): only a regular file, and
// at most `limit` bytes. A FIFO with no writer would block open() and so the whole event loop
// (no step timeout can end that); /dev/zero or a disk image would be read into memory without
// end. The open is non-blocking and the type is checked on the open descriptor (fstat), so
// nothing can be swapped in between the check and the read.
import { closeSync, constants, fstatSync, openSync, readSync, type Stats } from 'node:fs';

export class FileReadError extends Error {
  override name = 'FileReadError';
  /** errno code, or NOTREGULAR / TOOLARGE. */
  readonly code: string;
  /** What is wrong, to follow the path in a sentence: "does not exist", "is a named pipe (FIFO), not a regular file". */
  readonly reason: string;
  constructor(path: string, code: string, reason: string) {
    super(`${path} ${reason}`);
    this.code = code;
    this.reason = reason;
  }
}

function kind(st: Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a named pipe (FIFO)';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

const ERRNO_REASONS: Record<string, string> = {
  ENOENT: 'does not exist',
  EACCES: 'is not readable (permission denied)',
  EPERM: 'is not readable (permission denied)',
  EISDIR: 'is a directory',
  ENOTDIR: 'does not exist (a parent is not a directory)',
  ENXIO: 'is a socket or a device without a reader, not a regular file',
  ELOOP: 'is a symbolic link loop',
};

/** The file's bytes as UTF-8; throws FileReadError for anything but a regular file of at most `limit` bytes. */
export function readRegularFile(path: string, limit: number): string {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
    throw new FileReadError(path, code, ERRNO_REASONS[code] ?? `cannot be read (${code})`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) {
      const k = kind(st);
      throw new FileReadError(path, st.isDirectory() ? 'EISDIR' : 'NOTREGULAR', k === 'a directory' ? 'is a directory' : `is ${k === 'not a regular file' ? 'not a regular file' : `${k}, not a regular file`}`);
    }
    // Read up to limit + 1 whatever stat said: a file can grow while it is read.
    const buf = Buffer.alloc(limit + 1);
    let got = 0;
    while (got < buf.length) {
      const n = readSync(fd, buf, got, buf.length - got, null);
      if (n === 0) break;
      got += n;
    }
    if (got > limit) {
      buf.fill(0);
      throw new FileReadError(path, 'TOOLARGE', `is larger than ${limit >= 1024 ? `${Math.round(limit / 1024)} KiB` : `${limit} bytes`}`);
    }
    const text = buf.toString('utf8', 0, got);
    buf.fill(0); // credentials: no copy lingers in a buffer nobody owns
    return text;
  } catch (e) {
    if (e instanceof FileReadError) throw e;
    const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
    throw new FileReadError(path, code, ERRNO_REASONS[code] ?? `cannot be read (${code})`);
  } finally {
    closeSync(fd);
  }
}

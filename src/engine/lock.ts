// One run at a time per state directory, among processes on this host.
//
// The lock is a series of generation files run.lock.1, run.lock.2, ...; the run holding the
// highest generation whose content says it is alive holds the lock. Each file is written whole
// to a temporary name and then hard-linked into place (link(2) fails if the name exists), so a
// generation file never exists empty or half-written and exactly one racer can make a given
// generation. A stale holder (a run killed with SIGKILL: dead pid, or a pid of an earlier boot)
// is never deleted by the next run; that run takes the *next* generation instead, which is as
// atomic as the first take and leaves nothing for a slow racer to delete by mistake. The highest
// file is never deleted (a released run rewrites it as released), and a racer that made its
// generation checks afterwards that nothing higher exists, so at most one run believes it holds
// the lock at any time. Lower generations are cleared by the holder.
import { linkSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';

export class LockHeldError extends Error {
  override name = 'LockHeldError';
}

interface Holder {
  pid?: number;
  boot?: string;
  since?: string;
  released?: boolean;
}

const GENERATION = /^run\.lock\.(\d+)$/;
const TEMP = /^\.run\.lock\.tmp\.(\d+)\./;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

/** Generation numbers present, highest first. */
function generations(dir: string): number[] {
  return readdirSync(dir)
    .map((n) => GENERATION.exec(n)?.[1])
    .filter((n): n is string => n !== undefined)
    .map(Number)
    .sort((a, b) => b - a);
}

/** The holder a generation file names; undefined when the file is gone. */
function readHolder(file: string): Holder | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    return JSON.parse(text) as Holder;
  } catch {
    return {}; // not ours (files are linked in whole): nobody alive holds it
  }
}

function holds(h: Holder, boot: string): boolean {
  // The state directory outlives reboots, and after one a pid means someone else.
  return !h.released && h.pid !== undefined && (h.boot === undefined || h.boot === boot) && alive(h.pid);
}

/** Takes the run lock of `stateDir` or throws LockHeldError; returns the release function. */
export function acquireLock(stateDir: string): () => void {
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const boot = bootId();
  const me: Holder = { pid: process.pid, boot, since: new Date().toISOString() };
  const tmp = join(stateDir, `.run.lock.tmp.${process.pid}.${randomBytes(6).toString('hex')}`);
  writeFileSync(tmp, JSON.stringify(me), { mode: 0o600 });
  const file = (g: number) => join(stateDir, `run.lock.${g}`);
  try {
    // Each pass either returns, throws, or lost a race to a run that made progress.
    for (let pass = 0; pass < 1000; pass++) {
      const top = generations(stateDir)[0] ?? 0;
      if (top > 0) {
        const h = readHolder(file(top));
        if (h === undefined) continue; // cleared by a new holder under us: look again
        if (holds(h, boot)) throw new LockHeldError(`another run (pid ${h.pid}, since ${h.since}) holds ${file(top)}; not starting a second one`);
      }
      const mine = top + 1;
      try {
        linkSync(tmp, file(mine));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') continue;
        throw e;
      }
      if (generations(stateDir)[0] !== mine) {
        // A racer went higher meanwhile (it saw an older, stale generation): it holds, not us.
        rmSync(file(mine), { force: true });
        continue;
      }
      clearBelow(stateDir, mine);
      return releaser(stateDir, file(mine), me);
    }
    throw new LockHeldError(`could not take the run lock in ${stateDir}: other runs keep taking it`);
  } finally {
    rmSync(tmp, { force: true });
  }
}

/** Older generations and the temporary files of dead runs: only the holder clears them. */
function clearBelow(stateDir: string, mine: number): void {
  for (const name of readdirSync(stateDir)) {
    const g = GENERATION.exec(name)?.[1];
    const t = TEMP.exec(name)?.[1];
    if ((g !== undefined && Number(g) < mine) || (t !== undefined && Number(t) !== process.pid && !alive(Number(t)))) rmSync(join(stateDir, name), { force: true });
  }
  rmSync(join(stateDir, 'run.lock'), { force: true }); // the single lock file of earlier versions
}

function releaser(stateDir: string, file: string, me: Holder): () => void {
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    process.off('exit', release);
    // Rewritten, not deleted: the highest generation must stay (see the top of this file).
    const tmp = join(stateDir, `.run.lock.tmp.${process.pid}.${randomBytes(6).toString('hex')}`);
    try {
      writeFileSync(tmp, JSON.stringify({ ...me, released: true }), { mode: 0o600 });
      renameSync(tmp, file);
    } catch {
      rmSync(tmp, { force: true });
      // A state directory removed under us: nothing left to release.
    }
  };
  process.on('exit', release);
  return release;
}

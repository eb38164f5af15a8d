// One run at a time per state directory. The lock file holds the owner's pid, so a run
// killed with SIGKILL leaves a lock that the next run recognises as stale and takes over.
import { mkdirSync, openSync, readFileSync, rmSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';

export class LockHeldError extends Error {
  override name = 'LockHeldError';
}

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

export function acquireLock(stateDir: string): () => void {
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const file = join(stateDir, 'run.lock');
  for (let tries = 0; tries < 3; tries++) {
    try {
      const fd = openSync(file, 'wx', 0o600);
      writeSync(fd, JSON.stringify({ pid: process.pid, boot: bootId(), since: new Date().toISOString() }));
      closeSync(fd);
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        process.off('exit', release);
        rmSync(file, { force: true });
      };
      process.on('exit', release);
      return release;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      let holder: { pid?: number; boot?: string; since?: string } = {};
      try {
        holder = JSON.parse(readFileSync(file, 'utf8')) as typeof holder;
      } catch {
        // Half-written by a run killed between open and write: stale.
      }
      // The state directory outlives reboots, and after one a pid means someone else.
      const sameBoot = holder.boot === undefined || holder.boot === bootId();
      if (holder.pid && sameBoot && alive(holder.pid)) {
        throw new LockHeldError(`another run (pid ${holder.pid}, since ${holder.since}) holds ${file}; not starting a second one`);
      }
      rmSync(file, { force: true });
    }
  }
  throw new LockHeldError(`could not take ${file}`);
}

// Child processes that must not outlive the test process. Two layers: an 'exit' hook covers
// normal ends and uncaught errors; PR_SET_PDEATHSIG (via setpriv, which then execs the binary,
// so the pid stays the binary's) covers SIGKILL, test-runner timeouts and crashes.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync, rmSync } from 'node:fs';

let setprivWorks: boolean | undefined;
function hasSetpriv(): boolean {
  setprivWorks ??= process.platform === 'linux' && spawnSync('setpriv', ['--pdeathsig', 'KILL', 'true'], { stdio: 'ignore' }).status === 0;
  return setprivWorks;
}

export interface TiedProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  readonly logPath: string;
  /** Settles when the process has exited, whoever ended it. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  isRunning(): boolean;
  logTail(lines?: number): string;
}

const live = new Set<ChildProcess>();
const dirsToRemove = new Set<string>();
let hooked = false;

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const child of live) {
      try {
        child.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const dir of dirsToRemove) rmSync(dir, { recursive: true, force: true });
  });
}

/** Removes `dir` when the process exits, unless forgotten first. */
export function removeOnExit(dir: string): () => void {
  hookExit();
  dirsToRemove.add(dir);
  return () => dirsToRemove.delete(dir);
}

/** Starts `file` with stdout and stderr in `logPath` (a file, so a chatty child never blocks on a full pipe). */
export function spawnTied(name: string, file: string, args: string[], logPath: string): TiedProcess {
  hookExit();
  const fd = openSync(logPath, 'a');
  const [cmd, argv] = hasSetpriv() ? ['setpriv', ['--pdeathsig', 'KILL', '--', file, ...args]] : [file, args];
  const child = spawn(cmd as string, argv as string[], { stdio: ['ignore', fd, fd], detached: false });
  closeSync(fd);
  if (child.pid === undefined) throw new Error(`${name}: could not start ${file}`);
  live.add(child);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      live.delete(child);
      resolve({ code, signal });
    });
    child.once('error', () => {
      live.delete(child);
      resolve({ code: null, signal: null });
    });
  });
  return {
    name,
    child,
    pid: child.pid,
    logPath,
    exited,
    isRunning: () => child.exitCode === null && child.signalCode === null,
    logTail: (lines = 30) => {
      try {
        return readFileSync(logPath, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
      } catch {
        return '(no log)';
      }
    },
  };
}

/** SIGKILL: the rig owns the data too, so there is nothing a graceful shutdown would save. */
export async function killTied(p: TiedProcess, timeoutMs = 10_000): Promise<void> {
  if (p.isRunning()) p.child.kill('SIGKILL');
  const timer = new Promise<'timeout'>((r) => setTimeout(r, timeoutMs, 'timeout').unref());
  if ((await Promise.race([p.exited, timer])) === 'timeout') throw new Error(`${p.name} (pid ${p.pid}) did not exit after SIGKILL`);
}

// The host side of `doctor`: what it can see without privileges it lacks. /sys/class/net is
// readable by anyone, the list of /var/data/configs usually too; `iptables-save` needs root (or
// CAP_NET_ADMIN). What is refused becomes a note in the snapshot instead of failing the check.
import { readdir } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import type { HostSnapshot } from './findings.ts';

export interface HostReadOptions {
  /** Where network links are listed (tests point it elsewhere). */
  sysClassNet?: string;
  /** Bound on iptables-save. */
  timeoutMs?: number;
  /** Where the apps' configs live (SPEC: /var/data/configs; tests point it elsewhere). */
  configsDir?: string;
}

function run(cmd: string, args: string[], timeoutMs: number): Promise<{ code: number | string; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    // Only PATH is passed on: the child needs nothing else of ours.
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } }, (err, stdout, stderr) => {
      const e = err as (Omit<NodeJS.ErrnoException, 'code'> & { code?: string | number; killed?: boolean }) | null;
      const code = !e ? 0 : e.killed ? 'timeout' : (e.code ?? 1);
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

export async function readHost(opts: HostReadOptions = {}): Promise<HostSnapshot> {
  const notes: string[] = [];
  const snapshot: HostSnapshot = { notes };
  const dir = opts.sysClassNet ?? '/sys/class/net';
  try {
    snapshot.links = await readdir(dir);
  } catch (e) {
    notes.push(`network links not checked: ${dir} cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  const configs = opts.configsDir ?? '/var/data/configs';
  try {
    snapshot.configs = { dir: configs, entries: (await readdir(configs, { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => e.name) };
  } catch (e) {
    notes.push(`app config directories not checked: ${configs} cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  const r = await run('iptables-save', [], opts.timeoutMs ?? 10_000);
  if (r.code === 0) snapshot.iptables = r.stdout;
  else if (r.code === 'ENOENT') notes.push('iptables chains not checked: iptables-save is not on PATH');
  else if (/permission denied|must be root|operation not permitted/i.test(r.stderr)) {
    notes.push("iptables chains not checked: iptables-save needs root; run doctor with sudo, or check by hand with `sudo iptables-save | grep -cE '^:(KUBE-SVC|KUBE-SERVICES|FLANNEL)'` (0 = clean)");
  } else {
    const why = r.stderr.split('\n').find((l) => l.trim())?.trim().slice(0, 200) ?? `exit ${r.code}`;
    notes.push(`iptables chains not checked: iptables-save failed (${why})`);
  }
  return snapshot;
}

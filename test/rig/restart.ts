// Stops and starts the rig's kube-apiserver mid-test, as a k3s restart does to the daemon: same
// binary, same arguments (port, certificates, etcd), so clients see the same server come back.
// The replacement is tied to the test process like the original; dispose() it before cp.stop().
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ControlPlane } from './control-plane.ts';
import { kubeRequest } from './kube-http.ts';
import { killTied, spawnTied, type TiedProcess } from './processes.ts';

export interface ApiserverControl {
  /** SIGKILL, and wait until the port no longer answers. */
  stop(): Promise<void>;
  /** Start it again with the original arguments; resolves when /readyz answers 200. */
  start(opts?: { readyTimeoutMs?: number }): Promise<{ readyMs: number }>;
  /** Kill the replacement, if one runs. */
  dispose(): Promise<void>;
}

export function apiserverControl(cp: ControlPlane): ApiserverControl {
  // Read while it runs: the command line is gone with the process.
  const argv = readFileSync(`/proc/${cp.pids.apiserver}/cmdline`, 'utf8').split('\0').filter(Boolean);
  if (!/kube-apiserver$/.test(argv[0] ?? '')) throw new Error(`pid ${cp.pids.apiserver} is not the kube-apiserver: ${argv[0]}`);
  let pid = cp.pids.apiserver;
  let replacement: TiedProcess | undefined;
  let generation = 0;

  const answers = async () => {
    const r = await kubeRequest(cp.rig, 'GET', '/readyz', { timeoutMs: 1000 }).catch(() => undefined);
    return r?.status === 200;
  };

  return {
    async stop() {
      if (replacement) await killTied(replacement);
      else {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      const deadline = performance.now() + 10_000;
      while (await answers()) {
        if (performance.now() > deadline) throw new Error('the kube-apiserver still answers after SIGKILL');
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async start(opts = {}) {
      const started = performance.now();
      replacement = spawnTied('kube-apiserver', argv[0]!, argv.slice(1), join(cp.dir, `apiserver-restart-${++generation}.log`));
      pid = replacement.pid;
      const deadline = started + (opts.readyTimeoutMs ?? 60_000);
      for (;;) {
        if (!replacement.isRunning()) throw new Error(`the restarted kube-apiserver exited:\n${replacement.logTail()}`);
        if (await answers()) return { readyMs: Math.round(performance.now() - started) };
        if (performance.now() > deadline) throw new Error(`the restarted kube-apiserver was not ready within ${opts.readyTimeoutMs ?? 60_000} ms`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async dispose() {
      if (replacement) await killTied(replacement);
      replacement = undefined;
    },
  };
}

// Which helm the Helm suites run against, and a shim that records every helm process the code
// under test starts. HB_HELM=helm4 runs a suite against Helm 4 (test/integration/helm4-*.test.ts
// do that), anything else against Helm 3. The shim goes first on PATH, where the daemon finds
// helm, so counting its lines proves how many helm processes ran: no adapter seam involved.
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { binPath } from './binaries.ts';

export type HelmBinary = 'helm' | 'helm4';

/** The helm binary the suites test, from $HB_HELM. */
export function helmUnderTest(): HelmBinary {
  return process.env.HB_HELM === 'helm4' ? 'helm4' : 'helm';
}

export interface HelmShim {
  /** Put this first on PATH. */
  dir: string;
  /** The subcommands of every helm run since the last reset, in order. */
  calls(): string[];
  reset(): void;
}

export function installHelmShim(dir: string, binary: HelmBinary = helmUnderTest()): HelmShim {
  mkdirSync(dir, { recursive: true });
  const log = join(dir, 'helm-calls');
  const real = binPath(binary);
  writeFileSync(join(dir, 'helm'), `#!/bin/sh\nprintf '%s\\n' "$1" >> '${log}'\nexec '${real}' "$@"\n`);
  chmodSync(join(dir, 'helm'), 0o755);
  return {
    dir,
    calls() {
      try {
        return readFileSync(log, 'utf8').split('\n').filter(Boolean);
      } catch {
        return [];
      }
    },
    reset() {
      rmSync(log, { force: true });
    },
  };
}

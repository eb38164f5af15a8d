// Where the real binaries built by scripts/test-binaries.sh live. A missing binary is an error,
// never a skip: a suite that quietly skips on CI proves nothing.
import { accessSync, constants } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

export type BinaryName = 'kube-apiserver' | 'kube-controller-manager' | 'kube-scheduler' | 'etcd' | 'kubectl' | 'kwok' | 'helm' | 'helm4' | 'sops' | 'age' | 'age-keygen' | 'kustomize' | 'ksops';

export function binDir(): string {
  return process.env.HB_BIN_DIR ? resolve(process.env.HB_BIN_DIR) : join(repoRoot, '.bin');
}

export function binPath(name: BinaryName): string {
  const p = join(binDir(), name);
  try {
    accessSync(p, constants.X_OK);
  } catch {
    throw new Error(`test binary '${name}' is missing at ${p}; build the test binaries with: bash scripts/test-binaries.sh`);
  }
  return p;
}

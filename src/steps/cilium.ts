// Cilium, the CNI: first, because no pod schedules without it. Values: desired/cilium-values.ts.
import { ciliumValues } from '../desired/cilium-values.ts';
import { helmReleaseStep } from './helm-release.ts';
import type { WorkloadRef } from './rollout.ts';

export const CILIUM_RELEASE = { name: 'cilium', namespace: 'kube-system' } as const;

/** The agent DaemonSet and the operator Deployment the upstream chart creates. */
export const CILIUM_WORKLOADS: readonly WorkloadRef[] = [
  { kind: 'DaemonSet', name: 'cilium', namespace: CILIUM_RELEASE.namespace },
  { kind: 'Deployment', name: 'cilium-operator', namespace: CILIUM_RELEASE.namespace },
];

export interface CiliumStepOptions {
  /** Bound of the readiness wait; a first boot pulls the images. */
  rolloutTimeoutMs?: number;
  pollMs?: number;
  helmTimeoutMs?: number;
}

export function createCiliumStep(opts: CiliumStepOptions = {}) {
  const rolloutTimeoutMs = opts.rolloutTimeoutMs ?? 10 * 60_000;
  const helmTimeoutMs = opts.helmTimeoutMs ?? 5 * 60_000;
  return helmReleaseStep({
    name: 'cilium',
    needs: ['preflight'],
    release: (s) => ({ ...CILIUM_RELEASE, chart: s.cilium.chart, values: ciliumValues(s) }),
    rollout: (s) => (s.cilium.waitForReady ? [...CILIUM_WORKLOADS] : []),
    // Room for a recovery, an upgrade and the wait in one attempt.
    timeoutMs: 2 * helmTimeoutMs + rolloutTimeoutMs + 60_000,
    helmTimeoutMs,
    rolloutTimeoutMs,
    pollMs: opts.pollMs ?? 2000,
  });
}

export const ciliumStep = createCiliumStep();

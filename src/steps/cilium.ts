// Cilium, the CNI: first, because no pod schedules without it. Values: desired/cilium-values.ts.
import { ciliumValues } from '../desired/cilium-values.ts';
import type { ChartMeta } from '../adapters/chart-meta.ts';
import { helmReleaseStep } from './helm-release.ts';
import type { WorkloadRef } from './rollout.ts';

export const CILIUM_RELEASE = { name: 'cilium', namespace: 'kube-system' } as const;

/** The agent DaemonSet and the operator Deployment the upstream chart creates. */
export const CILIUM_WORKLOADS: readonly WorkloadRef[] = [
  { kind: 'DaemonSet', name: 'cilium', namespace: CILIUM_RELEASE.namespace },
  { kind: 'Deployment', name: 'cilium-operator', namespace: CILIUM_RELEASE.namespace },
];

const minorOf = (v: string) => {
  const m = /^v?(\d+)\.(\d+)\.\d+/.exec(v);
  return m ? { major: Number(m[1]), minor: Number(m[2]) } : undefined;
};

/**
 * Cilium upgrades one minor version at a time (its upgrade guide: the agent and operator of
 * adjacent minors work together while the DaemonSet rolls, and each minor's migrations expect
 * the previous one's state), and a downgrade to an older minor needs its own procedure. Refuse
 * a jump of more than one minor, or back to an older one, and name the version to pin first;
 * patch releases move freely.
 */
export function ciliumUpgradeRefusal(deployed: ChartMeta, desired: ChartMeta): string | undefined {
  const from = minorOf(deployed.version);
  const to = minorOf(desired.version);
  if (!from || !to || deployed.name !== 'cilium' || desired.name !== 'cilium') return undefined;
  const step = (to.major - from.major) * 1000 + (to.minor - from.minor);
  if (step >= 0 && step <= 1) return undefined;
  const move = `${deployed.version} to ${desired.version}`;
  if (step < 0) {
    return `refusing to move Cilium from ${move}: ${desired.version} is an older minor version, and Cilium downgrades need their own procedure; keep cilium.chart at ${from.major}.${from.minor}.x or newer`;
  }
  const next = to.major === from.major ? `${from.major}.${from.minor + 1}.x` : 'the next minor release';
  return `refusing to upgrade Cilium from ${move}: Cilium upgrades one minor version at a time; pin cilium.chart.version (or cilium.chart.path) to ${next} first, apply, then move on to ${desired.version}`;
}

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
    refuseUpgrade: ciliumUpgradeRefusal,
  });
}

export const ciliumStep = createCiliumStep();

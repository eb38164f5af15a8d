// Argo CD with the ksops repo-server patch: after it, git owns the cluster. Values:
// desired/argocd-values.ts. No readiness wait here: root-appset waits for the CRD it needs.
import { argocdValues } from '../desired/argocd-values.ts';
import { helmReleaseStep } from './helm-release.ts';

export const ARGOCD_RELEASE = { name: 'argocd', namespace: 'argocd' } as const;

export interface ArgocdStepOptions {
  helmTimeoutMs?: number;
}

export function createArgocdStep(opts: ArgocdStepOptions = {}) {
  const helmTimeoutMs = opts.helmTimeoutMs ?? 5 * 60_000;
  return helmReleaseStep({
    name: 'argocd',
    // cilium-l2 (the ingress VIP is announced) and age-key (the Secret the repo-server mounts).
    needs: ['cilium-l2', 'age-key'],
    release: (s) => ({ ...ARGOCD_RELEASE, chart: s.argocd.chart, values: argocdValues(s) }),
    timeoutMs: 2 * helmTimeoutMs + 60_000,
    helmTimeoutMs,
    rolloutTimeoutMs: 0,
    pollMs: 2000,
  });
}

export const argocdStep = createArgocdStep();

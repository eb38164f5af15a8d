// The cluster side of `doctor`: lists, read-only, what findings.ts looks at. Kinds of groups the
// server does not serve are skipped using one discovery read (GET /apis), so a clean cluster
// costs a handful of reads. Most lists ask for metadata only: CRDs are megabytes whole.
import type { KubeClient } from '../adapters/kube.ts';
import { apiError } from '../adapters/kube.ts';
import type { KubeObject } from '../steps/types.ts';
import type { ClusterSnapshot } from './findings.ts';

interface ApiGroupList {
  groups?: { name: string; preferredVersion?: { groupVersion: string } }[];
}

/** Served API groups and each one's preferred groupVersion ("cert-manager.io" → "cert-manager.io/v1"). */
export async function servedGroups(kube: KubeClient, signal?: AbortSignal): Promise<Map<string, string>> {
  const res = await kube.raw('GET', '/apis', { signal, timeoutMs: 15_000 });
  if (res.status !== 200) throw apiError(res.status, res.headers['retry-after'], res.text, 'discovery of API groups (GET /apis)');
  const out = new Map<string, string>();
  for (const g of (JSON.parse(res.text) as ApiGroupList).groups ?? []) if (g.preferredVersion) out.set(g.name, g.preferredVersion.groupVersion);
  return out;
}

export async function readCluster(kube: KubeClient, signal?: AbortSignal): Promise<ClusterSnapshot> {
  const groups = await servedGroups(kube, signal);
  const meta = { metadataOnly: true } as const;
  // Kinds of one groupVersion one after the other, so its discovery is read once and cached.
  const inTurn = async (gv: string | undefined, kinds: string[], opts: { namespace?: string; metadataOnly?: boolean } = {}): Promise<KubeObject[][]> => {
    const out: KubeObject[][] = [];
    for (const k of kinds) out.push(gv ? await kube.list(gv, k, opts) : []);
    return out;
  };
  const [[nodes], [daemonSets, deployments], [crds], [helmCharts], issuers, secretStores, [applications], [ingressClasses]] = await Promise.all([
    inTurn('v1', ['Node'], meta),
    inTurn('apps/v1', ['DaemonSet', 'Deployment'], meta),
    inTurn('apiextensions.k8s.io/v1', ['CustomResourceDefinition'], meta),
    inTurn(groups.get('helm.cattle.io'), ['HelmChart'], { namespace: 'kube-system', ...meta }),
    inTurn(groups.get('cert-manager.io'), ['ClusterIssuer', 'Issuer']),
    inTurn(groups.get('external-secrets.io'), ['ClusterSecretStore', 'SecretStore']),
    inTurn(groups.get('argoproj.io'), ['Application'], meta),
    inTurn('networking.k8s.io/v1', ['IngressClass']),
  ]);
  return { nodes: nodes!, daemonSets: daemonSets!, deployments: deployments!, crds: crds!, helmCharts: helmCharts!, issuers: issuers.flat(), secretStores: secretStores.flat(), applications: applications!, ingressClasses: ingressClasses! };
}

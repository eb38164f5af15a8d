// The root ApplicationSet: the hand-over to git. Every directory <path>/<group>/<app> becomes an
// Application named <app> that deploys into namespace <app>. Pure.
import type { Settings } from '../settings/schema.ts';
import type { KubeObject } from '../steps/types.ts';
import { OWNER_LABEL } from '../adapters/kube.ts';

export const APPSET_NAME = 'homelab';
export const APPSET_NAMESPACE = 'argocd';
export const APPSET_API_VERSION = 'argoproj.io/v1alpha1';
export const APPSET_KIND = 'ApplicationSet';
export const APPSET_CRD = 'applicationsets.argoproj.io';
/** In-cluster destination: the cluster Argo CD runs in. */
export const IN_CLUSTER = 'https://kubernetes.default.svc';

export function desiredAppSet(settings: Settings): KubeObject {
  const { repoURL, revision, groups } = settings.gitops;
  // "a/b/" and "/a/b" would make Argo CD match nothing; normalise to "a/b".
  const path = settings.gitops.path.replace(/^\/+|\/+$/g, '');
  return {
    apiVersion: APPSET_API_VERSION,
    kind: APPSET_KIND,
    metadata: { name: APPSET_NAME, namespace: APPSET_NAMESPACE, labels: { ...OWNER_LABEL } },
    spec: {
      goTemplate: true,
      // A typo in the template fails the generator instead of rendering "<no value>" names.
      goTemplateOptions: ['missingkey=error'],
      generators: [
        {
          git: {
            repoURL,
            revision,
            directories: groups.map((g) => ({ path: `${path}/${g}/*` })),
          },
        },
      ],
      template: {
        metadata: { name: '{{.path.basename}}' },
        spec: {
          project: 'default',
          source: { repoURL, targetRevision: revision, path: '{{.path.path}}' },
          destination: { server: IN_CLUSTER, namespace: '{{.path.basename}}' },
          syncPolicy: {
            automated: { prune: true, selfHeal: true },
            // ServerSideApply: CRDs like the Prometheus Operator's exceed the 256 KiB annotation
            // client-side apply needs.
            syncOptions: ['CreateNamespace=true', 'ServerSideApply=true'],
            // Argo CD does not retry a failed automated sync of the same commit by itself, and a
            // first sync fails while a CRD another app brings is not there yet.
            retry: { limit: 10, backoff: { duration: '10s', factor: 2, maxDuration: '5m' } },
          },
        },
      },
      // A directory deleted from git (or a broken generator) deletes its Application, but the
      // workloads it deployed stay: no cascade from a git mistake into the cluster.
      syncPolicy: { preserveResourcesOnDeletion: true },
    },
  };
}

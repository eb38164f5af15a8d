import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseSettings, SettingsError } from '../../src/settings/load.ts';
import { desiredAppSet } from '../../src/desired/appset.ts';
import { rootAppsetStep } from '../../src/steps/root-appset.ts';
import { OWNER_LABEL } from '../../src/adapters/kube.ts';
import { preflightStep } from '../../src/steps/preflight.ts';

const settings = (gitops: Record<string, unknown> = {}) =>
  parseSettings({
    domain: 'example.org',
    network: { lbPool: { start: '192.168.0.240', stop: '192.168.0.250' }, ingressIP: '192.168.0.240' },
    gitops: { repoURL: 'https://github.com/example/homelab.git', ...gitops },
  });

type Obj = Record<string, any>;
const specOf = (gitops?: Record<string, unknown>) => desiredAppSet(settings(gitops)).spec as Obj;

test('the root ApplicationSet lives in argocd, owned by the daemon', () => {
  const a = desiredAppSet(settings());
  assert.equal(a.apiVersion, 'argoproj.io/v1alpha1');
  assert.equal(a.kind, 'ApplicationSet');
  assert.equal(a.metadata.namespace, 'argocd');
  assert.deepEqual(a.metadata.labels, { ...OWNER_LABEL });
});

test('one git directory generator, a directory glob per group under the gitops path', () => {
  const s = specOf({ revision: 'v2', path: 'k8s/argocd-homelab' });
  assert.equal(s.generators.length, 1);
  const git = s.generators[0].git;
  assert.equal(git.repoURL, 'https://github.com/example/homelab.git');
  assert.equal(git.revision, 'v2');
  assert.deepEqual(git.directories, [{ path: 'k8s/argocd-homelab/infra/*' }, { path: 'k8s/argocd-homelab/apps/*' }, { path: 'k8s/argocd-homelab/media/*' }]);
});

test('groups come from settings; slashes around the path are normalised', () => {
  const s = specOf({ path: '/gitops/', groups: ['core'] });
  assert.deepEqual(s.generators[0].git.directories, [{ path: 'gitops/core/*' }]);
});

test('go templates fail on a missing key instead of rendering "<no value>"', () => {
  const s = specOf();
  assert.equal(s.goTemplate, true);
  assert.deepEqual(s.goTemplateOptions, ['missingkey=error']);
});

test('Application name and destination namespace are the directory basename; source is that directory', () => {
  const t = specOf({ revision: 'main' }).template;
  assert.equal(t.metadata.name, '{{.path.basename}}');
  assert.equal(t.spec.destination.namespace, '{{.path.basename}}');
  assert.equal(t.spec.destination.server, 'https://kubernetes.default.svc');
  assert.deepEqual(t.spec.source, { repoURL: 'https://github.com/example/homelab.git', targetRevision: 'main', path: '{{.path.path}}' });
  assert.equal(t.spec.project, 'default');
});

test('Applications sync automatically with prune and selfHeal, create their namespace, and use server-side apply', () => {
  const sp = specOf().template.spec.syncPolicy;
  assert.deepEqual(sp.automated, { prune: true, selfHeal: true });
  assert.deepEqual(sp.syncOptions, ['CreateNamespace=true', 'ServerSideApply=true']);
});

test('a failed automated sync is retried with backoff (a CRD another app brings may come later)', () => {
  assert.deepEqual(specOf().template.spec.syncPolicy.retry, { limit: 10, backoff: { duration: '10s', factor: 2, maxDuration: '5m' } });
});

test('a deleted directory never cascades into deleting workloads (ApplicationSet-level preserveResourcesOnDeletion)', () => {
  const s = specOf();
  assert.deepEqual(s.syncPolicy, { preserveResourcesOnDeletion: true });
  // It is an ApplicationSet field: inside the Application template it would mean nothing.
  assert.equal(s.template.spec.syncPolicy.preserveResourcesOnDeletion, undefined);
  // And no resources-finalizer on the Applications, which would cascade a delete.
  assert.equal(s.template.metadata.finalizers, undefined);
});

test('root-appset: waits for the CRD when discovery does not serve ApplicationSet yet, then creates', () => {
  const w = rootAppsetStep.want(settings(), {});
  const c = rootAppsetStep.changes(w, { served: false, current: undefined });
  assert.deepEqual(c.map((x) => `${x.action} ${x.target}`), ['wait CRD applicationsets.argoproj.io', 'create ApplicationSet argocd/homelab']);
  assert.deepEqual(rootAppsetStep.needs, ['argocd', 'repo-credential']);
  assert.deepEqual(rootAppsetStep.rendered(w).objects, [w]);
});

test('preflight re-checks the settings it is given, cross-field rules included, and is the root of the graph', () => {
  const s = settings();
  assert.deepEqual(preflightStep.want(s, {}), { ageKeyFile: '/var/lib/sops-nix/keys.txt', kubeconfigFile: '/etc/rancher/k3s/k3s.yaml' });
  const broken = { ...s, network: { ...s.network, lbPool: { start: '192.168.0.250', stop: '192.168.0.240' } } };
  assert.throws(() => preflightStep.want(broken, {}), (e: Error) => e instanceof SettingsError && /stop 192\.168\.0\.240 is below start/.test(e.message));
  assert.deepEqual(preflightStep.needs, []);
});

// `doctor` against a real kube-apiserver: a cluster as the bootstrap leaves it reads clean (exit 0);
// the same cluster seeded with each part of the old stack (the CRDs and objects those components
// would have) makes doctor name each one and exit 3, and change nothing; an API server nobody
// answers is exit 1 with the reason, within a bound. The same findings reach plan/apply as
// preflight warnings, and only before the first bootstrap: after it they cost one read.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { repoRoot } from '../rig/binaries.ts';
import { startControlPlane, type ControlPlane } from '../rig/control-plane.ts';
import { installCrds, sharedCrdsDir, waitEstablished } from '../rig/crds.ts';
import { kubeJson } from '../rig/kube-http.ts';
import { auditMark, countRequests } from '../rig/audit.ts';
import { KubeClient } from '../../src/adapters/kube.ts';
import { createLogger } from '../../src/log.ts';
import { warnLeftovers } from '../../src/doctor/doctor.ts';
import { makeShims, runBlock, runnableBlocks } from '../rig/doc-blocks.ts';

const CLI = join(repoRoot, 'src', 'cli.ts');
const OLD_CRDS = join(repoRoot, 'test', 'fixtures', 'old-stack', 'crds.yaml');
const DOC_BLOCKS = runnableBlocks(join(repoRoot, 'docs', 'migration.md'));

/** docs/migration.md's doctor command as written, with this settings file (and no host checks: see doctor()). */
async function docDoctor(block: 'doctor-before' | 'doctor-after', cfg: string) {
  return runBlock(DOC_BLOCKS.get(block)!, { cwd: dir, shims: makeShims(dir), substitutions: [['--config homelab.json', `--config ${cfg} --skip-host`]] });
}

let cp: ControlPlane;
let dir: string;

before(async () => {
  cp = await startControlPlane();
  dir = mkdtempSync(join(tmpdir(), 'hb-doctor-'));
});

after(async () => {
  await cp?.stop();
});

function config(kubeconfig: string, name = 'settings.json'): string {
  const s = JSON.parse(readFileSync(join(repoRoot, 'examples', 'homelab.json'), 'utf8')) as Record<string, unknown>;
  s.kubeconfigFile = kubeconfig;
  s.sops = { ageKeyFile: join(dir, 'keys.txt') }; // doctor reads no age key
  const file = join(dir, name);
  writeFileSync(file, JSON.stringify(s));
  return file;
}

function doctor(cfg: string): Promise<{ code: number; out: string; err: string; ms: number }> {
  const started = performance.now();
  return new Promise((resolve) => {
    // --skip-host: the machine running the tests is not the homelab (unit tests cover the host part).
    execFile(process.execPath, [CLI, 'doctor', '--config', cfg, '--skip-host'], { timeout: 120_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, out: String(stdout), err: String(stderr), ms: performance.now() - started });
    });
  });
}

/** Server-side apply as the rig user (not counted as the test user's reads). */
async function put(path: string, obj: Record<string, unknown>): Promise<void> {
  const name = (obj.metadata as { name: string }).name;
  await kubeJson(cp.rig, 'PATCH', `${path}/${name}?fieldManager=hb-test-rig&force=true`, { body: JSON.stringify(obj), contentType: 'application/apply-patch+yaml' });
}

const ns = (name: string) => put('/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
const node = (name: string, annotations: Record<string, string>) => put('/api/v1/nodes', { apiVersion: 'v1', kind: 'Node', metadata: { name, annotations } });
const workload = (kind: 'Deployment' | 'DaemonSet', namespace: string, name: string, labels: Record<string, string> = { app: name }) =>
  put(`/apis/apps/v1/namespaces/${namespace}/${kind.toLowerCase()}s`, {
    apiVersion: 'apps/v1',
    kind,
    metadata: { name, namespace, labels },
    spec: { selector: { matchLabels: labels }, template: { metadata: { labels }, spec: { containers: [{ name: 'c', image: 'registry.k8s.io/pause:3.10' }] } } },
  });

/** An Argo CD Application in argocd, metadata as given (no GC runs in the rig: a made-up owner uid stays). */
const application = (name: string, metadata: Record<string, unknown>) =>
  put('/apis/argoproj.io/v1alpha1/namespaces/argocd/applications', {
    apiVersion: 'argoproj.io/v1alpha1',
    kind: 'Application',
    metadata: { name, namespace: 'argocd', ...metadata },
    spec: { project: 'default', source: { repoURL: 'https://github.com/peterstorm/.dotfiles.git', targetRevision: 'HEAD', path: `k8s/argocd/${name}` }, destination: { server: 'https://kubernetes.default.svc' } },
  });

/** The Applications CRD as the argocd release leaves it (Helm's ownership marks), or as a `kubectl apply` of Argo CD does (none). */
const helmOwned = (owned: boolean) =>
  kubeJson(cp.rig, 'PATCH', '/apis/apiextensions.k8s.io/v1/customresourcedefinitions/applications.argoproj.io', {
    body: JSON.stringify({ metadata: { labels: { 'app.kubernetes.io/managed-by': owned ? 'Helm' : null }, annotations: { 'meta.helm.sh/release-name': owned ? 'argocd' : null, 'meta.helm.sh/release-namespace': owned ? 'argocd' : null } } }),
    contentType: 'application/merge-patch+json',
  });

const NEW_K3S_ARGS = ['server', '--flannel-backend=none', '--disable-network-policy', '--disable-kube-proxy', '--disable', 'servicelb', '--disable', 'traefik'];
// roles/k3s/default.nix of the user's old setup: --disable-kube-proxy was forgotten.
const OLD_K3S_ARGS = ['server', '--disable', 'servicelb', '--disable', 'traefik', '--write-kubeconfig-mode', '644', '--flannel-backend', 'none', '--disable-network-policy'];

describe('doctor', () => {
  it('a cluster as the bootstrap leaves it: nothing found, exit 0', async () => {
    await node('homelab', { 'k3s.io/node-args': JSON.stringify(NEW_K3S_ARGS) });
    await workload('DaemonSet', 'kube-system', 'cilium', { 'k8s-app': 'cilium' });
    await workload('Deployment', 'kube-system', 'coredns', { 'k8s-app': 'kube-dns' });
    await installCrds(cp, join(sharedCrdsDir, 'argocd', 'applications.argoproj.io.yaml'));
    await waitEstablished(cp, ['applications.argoproj.io']);
    await helmOwned(true);
    await ns('argocd');
    // The root ApplicationSet's app `monitoring`, and the Application it syncs from the tree
    // (infra/monitoring/kube-prometheus-stack.yaml), marked with Argo CD's tracking annotation.
    await application('monitoring', { ownerReferences: [{ apiVersion: 'argoproj.io/v1alpha1', kind: 'ApplicationSet', name: 'homelab', uid: '6f1c2a8e-0d4b-4c53-9a57-3b1f0e2d7c11' }] });
    await application('kube-prometheus-stack', { annotations: { 'argocd.argoproj.io/tracking-id': 'monitoring:argoproj.io/Application:argocd/kube-prometheus-stack' } });
    const mark = await auditMark(cp);
    const r = await doctor(config(cp.kubeconfigPath));
    const counts = await countRequests(cp, { since: mark });
    assert.equal(r.code, 0, `${r.out}\n${r.err}`);
    // No old group served: /readyz, /apis, 5 discoveries, 6 lists.
    assert.ok(counts.reads <= 13, `doctor made ${counts.reads} reads on a clean cluster: ${JSON.stringify(counts.byResource)}`);
    assert.match(r.out, /^no leftovers of the old stack found \(cluster at https:\/\/127\.0\.0\.1:\d+\)$/m);
    const doc = await docDoctor('doctor-after', config(cp.kubeconfigPath));
    assert.equal(doc.code, 0, doc.stdout + doc.stderr);
    assert.match(doc.stdout, /^no leftovers of the old stack found/m);
  });

  it('a cluster with each old-stack component: each named, with why and what to do; exit 3; nothing changed', async () => {
    await installCrds(cp, [OLD_CRDS, join(sharedCrdsDir, 'argocd', 'applications.argoproj.io.yaml')]);
    await waitEstablished(cp, ['ipaddresspools.metallb.io', 'clusterissuers.cert-manager.io', 'clustersecretstores.external-secrets.io', 'helmcharts.helm.cattle.io', 'applications.argoproj.io']);
    await helmOwned(false);
    for (const n of ['kube-flannel', 'ingress-nginx', 'metallb-system', 'cert-manager', 'external-dns', 'external-secrets', 'argocd']) await ns(n);
    await node('homelab', { 'k3s.io/node-args': JSON.stringify(OLD_K3S_ARGS), 'flannel.alpha.coreos.com/backend-type': 'vxlan', 'flannel.alpha.coreos.com/public-ip': '192.168.0.10' });
    await workload('DaemonSet', 'kube-flannel', 'kube-flannel-ds');
    await workload('DaemonSet', 'kube-system', 'svclb-ingress-nginx-controller-5c2a1b9f');
    await workload('Deployment', 'ingress-nginx', 'ingress-nginx-controller', { 'app.kubernetes.io/name': 'ingress-nginx' });
    await workload('Deployment', 'metallb-system', 'controller', { 'app.kubernetes.io/name': 'metallb' });
    await workload('DaemonSet', 'metallb-system', 'speaker', { 'app.kubernetes.io/name': 'metallb' });
    await workload('Deployment', 'cert-manager', 'cert-manager', { 'app.kubernetes.io/name': 'cert-manager' });
    await workload('Deployment', 'external-dns', 'external-dns', { 'app.kubernetes.io/name': 'external-dns' });
    await workload('Deployment', 'external-secrets', 'external-secrets', { 'app.kubernetes.io/name': 'external-secrets' });
    await put('/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts', { apiVersion: 'helm.cattle.io/v1', kind: 'HelmChart', metadata: { name: 'traefik', namespace: 'kube-system' }, spec: { chart: 'traefik' } });
    await put('/apis/networking.k8s.io/v1/ingressclasses', { apiVersion: 'networking.k8s.io/v1', kind: 'IngressClass', metadata: { name: 'nginx' }, spec: { controller: 'k8s.io/ingress-nginx' } });
    await put('/apis/metallb.io/v1beta1/namespaces/metallb-system/ipaddresspools', { apiVersion: 'metallb.io/v1beta1', kind: 'IPAddressPool', metadata: { name: 'default', namespace: 'metallb-system' }, spec: { addresses: ['192.168.0.240-192.168.0.250'] } });
    await put('/apis/cert-manager.io/v1/clusterissuers', {
      apiVersion: 'cert-manager.io/v1',
      kind: 'ClusterIssuer',
      metadata: { name: 'letsencrypt-prod' },
      spec: { acme: { server: 'https://acme-v02.api.letsencrypt.org/directory', solvers: [{ dns01: { cloudflare: { apiTokenSecretRef: { name: 'cloudflare-api-token-secret', key: 'cloudflare-api-token-secret' } } } }] } },
    });
    // The user's k8s/argocd/external-secrets/cluster-secret-store.yaml.
    await put('/apis/external-secrets.io/v1beta1/clustersecretstores', {
      apiVersion: 'external-secrets.io/v1beta1',
      kind: 'ClusterSecretStore',
      metadata: { name: 'azure-store' },
      spec: { provider: { azurekv: { tenantId: '00000000-0000-0000-0000-000000000000', vaultUrl: 'https://homelab-k8s.vault.azure.net/', authSecretRef: { clientId: { name: 'azure-secret-sp', key: 'ClientID', namespace: 'default' } } } } },
    });
    // k8s/argocd/app-of-apps.yaml, with the resources finalizer that cascades a delete.
    await put('/apis/argoproj.io/v1alpha1/namespaces/argocd/applications', {
      apiVersion: 'argoproj.io/v1alpha1',
      kind: 'Application',
      metadata: { name: 'app-of-apps', namespace: 'argocd', finalizers: ['resources-finalizer.argocd.argoproj.io'] },
      spec: { project: 'default', source: { repoURL: 'https://github.com/peterstorm/.dotfiles.git', targetRevision: 'HEAD', path: 'k8s/argocd/apps' }, destination: { server: 'https://kubernetes.default.svc' } },
    });
    // An app it deployed (k8s/argocd/apps/kube-plex.yaml), tracked by it.
    await application('kube-plex', { annotations: { 'argocd.argoproj.io/tracking-id': 'app-of-apps:argoproj.io/Application:argocd/kube-plex' }, finalizers: ['resources-finalizer.argocd.argoproj.io'] });

    const mark = await auditMark(cp);
    const r = await doctor(config(cp.kubeconfigPath));
    const counts = await countRequests(cp, { since: mark });
    assert.equal(r.code, 3, `${r.out}\n${r.err}`);
    const lines = r.out.trim().split('\n');
    const expect: [string, RegExp][] = [
      ['kube-proxy', /^kube-proxy: found node homelab runs k3s without --disable-kube-proxy/],
      ['flannel annotations', /^flannel: found node homelab carries flannel annotations/],
      ['flannel DaemonSet', /^flannel: found DaemonSet kube-flannel\/kube-flannel-ds/],
      ['traefik', /^traefik: found HelmChart kube-system\/traefik/],
      ['servicelb', /^servicelb: found DaemonSet kube-system\/svclb-ingress-nginx-controller-5c2a1b9f/],
      ['ingress-nginx', /^ingress-nginx: found Deployment ingress-nginx\/ingress-nginx-controller, IngressClass nginx/],
      ['MetalLB', /^MetalLB: found CRD ipaddresspools\.metallb\.io, CRD l2advertisements\.metallb\.io, Deployment metallb-system\/controller, DaemonSet metallb-system\/speaker/],
      ['cert-manager', /^cert-manager: found Deployment cert-manager\/cert-manager, ClusterIssuer letsencrypt-prod, 3 cert-manager\.io CRDs/],
      ['external-dns', /^external-dns: found Deployment external-dns\/external-dns, CRD dnsendpoints\.externaldns\.k8s\.io/],
      ['external-secrets', /^external-secrets: found Deployment external-secrets\/external-secrets, ClusterSecretStore azure-store \(Azure Key Vault\)/],
      ['App of Apps', /^App of Apps: found Application argocd\/app-of-apps, Application argocd\/kube-plex\..*do not delete them with kubectl/],
      ['Argo CD CRDs', /^Argo CD CRDs: found CRD applications\.argoproj\.io\..*takes them over \(helm --take-ownership\)/],
    ];
    for (const [what, re] of expect) assert.ok(lines.some((l) => re.test(l)), `${what} not reported as expected:\n${r.out}`);
    for (const l of lines.slice(0, -1)) assert.match(l, /\. Why it matters: .+\. What to do: .+\.$/, l);
    assert.equal(lines.at(-1), `${lines.length - 1} findings; doctor changed nothing (see docs/migration.md)`);
    assert.equal(counts.writes, 0, `doctor wrote: ${JSON.stringify(counts.byResource)}`);
    const doc = await docDoctor('doctor-before', config(cp.kubeconfigPath));
    assert.equal(doc.code, 3, doc.stdout + doc.stderr);
    assert.equal(doc.stdout, r.out);
    // /readyz, /apis, one discovery per groupVersion and one list per kind: 21 with every old group served.
    assert.ok(!/kube-prometheus-stack|monitoring,/.test(r.out), `the new stack's Applications were reported:\n${r.out}`);
    assert.ok(counts.reads <= 21, `doctor made ${counts.reads} reads: ${JSON.stringify(counts.byResource)}`);
    // CRDs are megabytes whole: listed as metadata only.
    assert.ok(counts.events.some((e) => e.objectRef?.resource === 'customresourcedefinitions' && e.verb === 'list'));
  });

  it("docs/migration.md's listing of the old claims shows each volume's host path and each mount's subPath", async () => {
    await ns('media');
    await put('/api/v1/persistentvolumes', {
      apiVersion: 'v1',
      kind: 'PersistentVolume',
      metadata: { name: 'media-ssd' },
      spec: { storageClassName: 'local-path', capacity: { storage: '400Gi' }, accessModes: ['ReadWriteMany'], hostPath: { path: '/var/data' }, claimRef: { namespace: 'media', name: 'media-ssd' } },
    });
    await put('/api/v1/namespaces/media/pods', {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'kube-plex-0', namespace: 'media' },
      spec: {
        containers: [{ name: 'plex', image: 'linuxserver/plex', volumeMounts: [{ name: 'data', mountPath: '/data' }, { name: 'data', mountPath: '/config', subPath: 'configs/plex-data' }] }],
        volumes: [{ name: 'data', persistentVolumeClaim: { claimName: 'media-ssd' } }],
      },
    });
    const r = await runBlock(DOC_BLOCKS.get('old-claims')!, { cwd: dir, shims: makeShims(dir), env: { KUBECONFIG: cp.kubeconfigPath } });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^media-ssd\s+media\s+media-ssd\s+\/var\/data\s+<none>$/m);
    assert.match(r.stdout, /^media\/kube-plex-0 \/data<-data: \/config<-data:configs\/plex-data$/m);
  });

  it('plan/apply preflight: the same findings as warnings before the first bootstrap; one read after it', async () => {
    const lines: string[] = [];
    const log = createLogger({ level: 'info', pretty: false, destination: new Writable({ write: (c, _e, cb) => (lines.push(String(c)), cb()) }) });
    const kube = new KubeClient(cp.kubeconfigPath, log);
    try {
      let mark = await auditMark(cp);
      await warnLeftovers(kube, log);
      const cold = await countRequests(cp, { since: mark });
      const warned = lines.map((l) => JSON.parse(l) as { level: string; msg: string }).filter((l) => l.level === 'warn');
      for (const c of ['flannel', 'kube-proxy', 'MetalLB', 'cert-manager', 'external-secrets', 'App of Apps']) assert.ok(warned.some((w) => w.msg.startsWith(`old stack: ${c}: found`)), `${c} not warned:\n${lines.join('')}`);
      assert.equal(cold.writes, 0);
      // The CRD list is metadata only (PartialObjectMetadataList): the megabytes of schema stay on the server.
      const crds = await kube.list('apiextensions.k8s.io/v1', 'CustomResourceDefinition', { metadataOnly: true });
      assert.ok(crds.length >= 10 && crds.every((c) => c.spec === undefined && c.metadata.name.includes('.')), 'CRDs came back whole');

      // The root ApplicationSet, as the bootstrap leaves it: the migration is done.
      await installCrds(cp, join(sharedCrdsDir, 'argocd', 'applicationsets.argoproj.io.yaml'));
      await waitEstablished(cp, ['applicationsets.argoproj.io']);
      await put('/apis/argoproj.io/v1alpha1/namespaces/argocd/applicationsets', {
        apiVersion: 'argoproj.io/v1alpha1',
        kind: 'ApplicationSet',
        metadata: { name: 'homelab', namespace: 'argocd', labels: { 'app.kubernetes.io/managed-by': 'homelab-bootstrap' } },
        spec: { generators: [], template: { metadata: { name: 'x' }, spec: { project: 'default', destination: {}, source: { repoURL: 'x' } } } },
      });
      lines.length = 0;
      mark = await auditMark(cp);
      await warnLeftovers(kube, log);
      const warm = await countRequests(cp, { since: mark });
      assert.equal(warm.reads, 1, `after the bootstrap the check costs one read, not ${JSON.stringify(warm.byResource)}`);
      assert.equal(lines.length, 0, lines.join(''));
      process.stderr.write(`# preflight leftover check: ${cold.reads} reads before the first bootstrap, ${warm.reads} after\n`);
    } finally {
      kube.close();
    }
  });

  it('an API server that does not answer: exit 1 naming the server and why, within the bound', async () => {
    const s = createServer();
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const port = (s.address() as { port: number }).port;
    await new Promise((r) => s.close(r));
    const kubeconfig = join(dir, 'kubeconfig-nobody-home');
    writeFileSync(kubeconfig, readFileSync(cp.kubeconfigPath, 'utf8').replace(cp.server, `https://127.0.0.1:${port}`), { mode: 0o600 });
    const r = await doctor(config(kubeconfig, 'dead.json'));
    assert.equal(r.code, 1, `${r.out}\n${r.err}`);
    assert.match(r.err, new RegExp(`^doctor: cannot check the cluster: the API server https://127\\.0\\.0\\.1:${port} is not ready after 10 s \\(\\d+ tries; last: connection refused\\); is k3s running\\?$`, 'm'));
    assert.equal(r.out, '');
    assert.ok(r.ms < 30_000, `took ${Math.round(r.ms)} ms`);
  });
});

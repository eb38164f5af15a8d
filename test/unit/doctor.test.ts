// doctor's pure part: which listed objects and host facts become findings, and which do not
// (the new stack itself must read as clean).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { clusterFindings, formatFinding, hostFindings, k3sNodeArgs, type ClusterSnapshot } from '../../src/doctor/findings.ts';
import { readHost } from '../../src/doctor/read-host.ts';
import type { KubeObject } from '../../src/steps/types.ts';

const obj = (apiVersion: string, kind: string, name: string, namespace?: string, extra: Partial<KubeObject['metadata']> = {}, rest: Record<string, unknown> = {}): KubeObject => ({
  apiVersion,
  kind,
  metadata: { name, ...(namespace ? { namespace } : {}), ...extra },
  ...rest,
});

const GOOD_ARGS = JSON.stringify(['server', '--flannel-backend', 'none', '--disable-network-policy', '--disable-kube-proxy', '--disable', 'servicelb', '--disable=traefik']);

function empty(): ClusterSnapshot {
  return { nodes: [], daemonSets: [], deployments: [], crds: [], helmCharts: [], issuers: [], secretStores: [], applications: [], ingressClasses: [] };
}

/** The new stack as the bootstrap leaves it: nothing to report. */
function newStack(): ClusterSnapshot {
  const s = empty();
  s.nodes = [obj('v1', 'Node', 'homelab', undefined, { annotations: { 'k3s.io/node-args': GOOD_ARGS } })];
  s.daemonSets = [obj('apps/v1', 'DaemonSet', 'cilium', 'kube-system', { labels: { 'k8s-app': 'cilium' } }), obj('apps/v1', 'DaemonSet', 'cilium-envoy', 'kube-system')];
  s.deployments = [obj('apps/v1', 'Deployment', 'coredns', 'kube-system'), obj('apps/v1', 'Deployment', 'argocd-server', 'argocd'), obj('apps/v1', 'Deployment', 'local-path-provisioner', 'kube-system')];
  const helmOwned = { labels: { 'app.kubernetes.io/managed-by': 'Helm' }, annotations: { 'meta.helm.sh/release-name': 'argocd', 'meta.helm.sh/release-namespace': 'argocd' } };
  s.crds = ['applications.argoproj.io', 'applicationsets.argoproj.io', 'appprojects.argoproj.io'].map((n) => obj('apiextensions.k8s.io/v1', 'CustomResourceDefinition', n, undefined, helmOwned));
  s.crds.push(obj('apiextensions.k8s.io/v1', 'CustomResourceDefinition', 'ciliumloadbalancerippools.cilium.io'));
  const byAppSet = { ownerReferences: [{ apiVersion: 'argoproj.io/v1alpha1', kind: 'ApplicationSet', name: 'homelab' }] };
  s.applications = [
    obj('argoproj.io/v1alpha1', 'Application', 'sonarr', 'argocd', byAppSet),
    obj('argoproj.io/v1alpha1', 'Application', 'monitoring', 'argocd', byAppSet),
    // infra/monitoring/kube-prometheus-stack.yaml: an Application the `monitoring` app syncs.
    obj('argoproj.io/v1alpha1', 'Application', 'kube-prometheus-stack', 'argocd', { annotations: { 'argocd.argoproj.io/tracking-id': 'monitoring:argoproj.io/Application:argocd/kube-prometheus-stack' } }),
    // One level further down, with label tracking.
    obj('argoproj.io/v1alpha1', 'Application', 'grandchild', 'argocd', { labels: { 'app.kubernetes.io/instance': 'kube-prometheus-stack' } }),
  ];
  s.ingressClasses = [obj('networking.k8s.io/v1', 'IngressClass', 'cilium', undefined, {}, { spec: { controller: 'cilium.io/ingress-controller' } })];
  return s;
}

test('the new stack itself has no findings', () => {
  assert.deepEqual(clusterFindings(newStack()), []);
});

test('k3s node-args: flags with separate or = values, booleans', () => {
  const a = k3sNodeArgs(obj('v1', 'Node', 'n', undefined, { annotations: { 'k3s.io/node-args': GOOD_ARGS } }))!;
  assert.deepEqual(a.values('flannel-backend'), ['none']);
  assert.deepEqual(a.values('disable'), ['servicelb', 'traefik']);
  assert.ok(a.has('disable-kube-proxy'));
  // k3s stores `--disable-kube-proxy=false` as two args.
  const off = k3sNodeArgs(obj('v1', 'Node', 'n', undefined, { annotations: { 'k3s.io/node-args': JSON.stringify(['server', '--disable-kube-proxy', 'false', '--disable-network-policy', '--flannel-backend', 'none']) } }))!;
  assert.equal(off.has('disable-kube-proxy'), false);
  assert.equal(off.has('disable-network-policy'), true);
  const s = newStack();
  s.nodes[0]!.metadata.annotations = { 'k3s.io/node-args': JSON.stringify(['server', '--flannel-backend', 'none', '--disable-network-policy', '--disable-kube-proxy', 'false', '--disable', 'servicelb,traefik']) };
  assert.deepEqual(clusterFindings(s).map((x) => x.component), ['kube-proxy']);
  assert.equal(k3sNodeArgs(obj('v1', 'Node', 'n', undefined, { annotations: { 'k3s.io/node-args': 'not json' } })), undefined);
});

test("the user's old k3s flags: kube-proxy still embedded (the flag was forgotten), flannel annotations from before", () => {
  const s = newStack();
  // roles/k3s/default.nix of the old setup.
  const old = ['server', '--disable', 'servicelb', '--disable', 'traefik', '--write-kubeconfig-mode', '644', '--flannel-backend', 'none', '--disable-network-policy'];
  s.nodes = [obj('v1', 'Node', 'homelab', undefined, { annotations: { 'k3s.io/node-args': JSON.stringify(old), 'flannel.alpha.coreos.com/backend-type': 'vxlan', 'flannel.alpha.coreos.com/public-ip': '192.168.0.10' } })];
  const f = clusterFindings(s);
  assert.deepEqual(f.map((x) => x.component).sort(), ['flannel', 'kube-proxy']);
  assert.match(formatFinding(f.find((x) => x.component === 'kube-proxy')!), /--disable-kube-proxy/);
  assert.match(formatFinding(f.find((x) => x.component === 'flannel')!), /flannel annotations/);
});

test('default k3s: flannel, kube-proxy, network policy, traefik and servicelb all named', () => {
  const s = newStack();
  s.nodes = [obj('v1', 'Node', 'homelab', undefined, { annotations: { 'k3s.io/node-args': JSON.stringify(['server']) } })];
  assert.deepEqual(clusterFindings(s).map((x) => x.component), ['flannel', 'kube-proxy', 'k3s network policy', 'traefik', 'servicelb']);
});

test('each old-stack component is named once, with its objects, why and what to do', () => {
  const s = newStack();
  s.daemonSets.push(obj('apps/v1', 'DaemonSet', 'kube-flannel-ds', 'kube-flannel'), obj('apps/v1', 'DaemonSet', 'kube-proxy', 'kube-system'), obj('apps/v1', 'DaemonSet', 'svclb-traefik-1a2b3c4d', 'kube-system'), obj('apps/v1', 'DaemonSet', 'speaker', 'metallb-system'));
  s.deployments.push(
    obj('apps/v1', 'Deployment', 'ingress-nginx-controller', 'ingress-nginx', { labels: { 'app.kubernetes.io/name': 'ingress-nginx' } }),
    obj('apps/v1', 'Deployment', 'cert-manager', 'cert-manager'),
    obj('apps/v1', 'Deployment', 'external-dns', 'external-dns'),
    obj('apps/v1', 'Deployment', 'external-secrets', 'external-secrets'),
  );
  s.helmCharts = [obj('helm.cattle.io/v1', 'HelmChart', 'traefik', 'kube-system'), obj('helm.cattle.io/v1', 'HelmChart', 'traefik-crd', 'kube-system')];
  s.crds.push(obj('apiextensions.k8s.io/v1', 'CustomResourceDefinition', 'ipaddresspools.metallb.io'));
  s.issuers = [obj('cert-manager.io/v1', 'ClusterIssuer', 'letsencrypt-prod', undefined, {}, { spec: { acme: { server: 'https://acme-v02.api.letsencrypt.org/directory' } } })];
  s.secretStores = [obj('external-secrets.io/v1beta1', 'ClusterSecretStore', 'azure-store', undefined, {}, { spec: { provider: { azurekv: { vaultUrl: 'https://homelab-k8s.vault.azure.net/' } } } })];
  s.applications.push(obj('argoproj.io/v1alpha1', 'Application', 'app-of-apps', 'argocd', { finalizers: ['resources-finalizer.argocd.argoproj.io'] }));
  s.ingressClasses.push(obj('networking.k8s.io/v1', 'IngressClass', 'nginx', undefined, {}, { spec: { controller: 'k8s.io/ingress-nginx' } }));
  s.crds[0]!.metadata.labels = {};
  const f = clusterFindings(s);
  assert.deepEqual(f.map((x) => x.component), ['flannel', 'kube-proxy', 'traefik', 'servicelb', 'ingress-nginx', 'MetalLB', 'cert-manager', 'external-dns', 'external-secrets', 'App of Apps', 'Argo CD CRDs']);
  const line = (c: string) => formatFinding(f.find((x) => x.component === c)!);
  assert.match(line('cert-manager'), /ClusterIssuer letsencrypt-prod/);
  assert.match(line('external-secrets'), /ClusterSecretStore azure-store \(Azure Key Vault\)/);
  assert.match(line('App of Apps'), /app-of-apps.*resources finalizer/);
  assert.match(line('App of Apps'), /do not delete them with kubectl/);
  assert.match(line('Argo CD CRDs'), /applications\.argoproj\.io.*takes them over \(helm --take-ownership\)/);
  assert.doesNotMatch(line('Argo CD CRDs'), /delete/);
  for (const x of f) assert.match(formatFinding(x), /^[^:]+: found .+\. Why it matters: .+\. What to do: .+\.$/);
});

test('host: flannel.1/cni0 links and kube-proxy/flannel chains are findings; the kubelet\'s own chains and Cilium\'s are not', () => {
  assert.deepEqual(hostFindings({ links: ['lo', 'enp3s0', 'cilium_host', 'cilium_vxlan', 'lxc_health'], iptables: ':KUBE-FIREWALL - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\n:CILIUM_POST_nat - [0:0]\n', notes: [] }), []);
  const f = hostFindings({
    links: ['lo', 'flannel.1', 'cni0'],
    iptables: '*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-ABCDEFGHIJKLMNOP - [0:0]\n:KUBE-SEP-QRSTUVWXYZ234567 - [0:0]\n:FLANNEL-POSTRTG - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n',
    notes: [],
  });
  assert.deepEqual(f.map((x) => x.component), ['flannel', 'iptables']);
  assert.match(formatFinding(f[0]!), /flannel\.1, cni0.*reboot/);
  assert.match(formatFinding(f[1]!), /4 chains.*KUBE-SVC-\*.*reboot/);
});

test('readHost: links from the given directory; iptables-save refused without root is a note, not a failure', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'hb-doctor-'));
  const net = join(dir, 'net');
  mkdirSync(join(net, 'flannel.1'), { recursive: true });
  mkdirSync(join(net, 'lo'));
  const bin = join(dir, 'bin');
  mkdirSync(bin);
  // What iptables-save prints to a non-root user.
  writeFileSync(join(bin, 'iptables-save'), '#!/bin/sh\necho "iptables-save v1.8.11 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)" >&2\nexit 4\n');
  chmodSync(join(bin, 'iptables-save'), 0o755);
  const path = process.env.PATH;
  process.env.PATH = `${bin}:${path}`;
  try {
    const h = await readHost({ sysClassNet: net });
    assert.deepEqual(h.links?.sort(), ['flannel.1', 'lo']);
    assert.equal(h.iptables, undefined);
    assert.match(h.notes.join('\n'), /iptables chains not checked: iptables-save needs root/);
    assert.deepEqual(hostFindings(h).map((x) => x.component), ['flannel']);
    process.env.PATH = join(dir, 'nothing-here');
    const none = await readHost({ sysClassNet: join(dir, 'missing') });
    assert.match(none.notes.join('\n'), /network links not checked: .*missing cannot be read \(ENOENT\)/);
    assert.match(none.notes.join('\n'), /iptables-save is not on PATH/);
  } finally {
    process.env.PATH = path;
  }
});

test('App of Apps: the old root and the Applications it tracks are findings; a tracking cycle ends', () => {
  const s = newStack();
  const tracked = (app: string, name: string) => ({ annotations: { 'argocd.argoproj.io/tracking-id': `${app}:argoproj.io/Application:argocd/${name}` } });
  s.applications.push(
    obj('argoproj.io/v1alpha1', 'Application', 'app-of-apps', 'argocd'),
    obj('argoproj.io/v1alpha1', 'Application', 'kube-plex', 'argocd', tracked('app-of-apps', 'kube-plex')),
    obj('argoproj.io/v1alpha1', 'Application', 'external-dns', 'argocd', { labels: { 'app.kubernetes.io/instance': 'app-of-apps' } }),
    // A tracking id copied from another object does not count: Argo CD ignores it.
    obj('argoproj.io/v1alpha1', 'Application', 'copied', 'argocd', tracked('monitoring', 'kube-prometheus-stack')),
    obj('argoproj.io/v1alpha1', 'Application', 'ping', 'argocd', tracked('pong', 'ping')),
    obj('argoproj.io/v1alpha1', 'Application', 'pong', 'argocd', tracked('ping', 'pong')),
  );
  const f = clusterFindings(s);
  assert.deepEqual(f.map((x) => x.component), ['App of Apps']);
  assert.equal(f[0]!.found, 'Application argocd/app-of-apps, Application argocd/kube-plex, Application argocd/external-dns, Application argocd/copied, Application argocd/ping, Application argocd/pong');
});

test('Argo CD CRDs: without Helm ownership the bootstrap takes them over; of another release, uninstall it', () => {
  const s = newStack();
  s.crds[0]!.metadata.labels = {};
  s.crds[0]!.metadata.annotations = {};
  s.crds[1]!.metadata.annotations = { 'meta.helm.sh/release-name': 'argo-cd', 'meta.helm.sh/release-namespace': 'argo' };
  const f = clusterFindings(s).map(formatFinding);
  assert.equal(f.length, 2, f.join('\n'));
  assert.match(f[0]!, /^Argo CD CRDs: found CRD applications\.argoproj\.io\. .*What to do: nothing: the bootstrap takes them over/);
  assert.match(f[1]!, /^Argo CD CRDs: found CRD applicationsets\.argoproj\.io \(Helm release argo\/argo-cd\)\. .*refuses.*What to do: uninstall that release \(helm uninstall argo-cd -n argo\).*do not delete the CRDs/);
  assert.doesNotMatch(f[1]!, /takes them over/);
  // The release name alone names another release too.
  s.crds[0]!.metadata.annotations = { 'meta.helm.sh/release-name': 'old-argocd' };
  assert.match(clusterFindings(s).map(formatFinding).join('\n'), /applications\.argoproj\.io \(Helm release argocd\/old-argocd\).*helm uninstall old-argocd -n argocd/);
});

test("host: app configs in the old setup's names (<app>-data) are a finding with the mv; other directories are not", async () => {
  assert.deepEqual(hostFindings({ configs: { dir: '/var/data/configs', entries: ['plex', 'transmission', 'keycloak-data', 'monitoring'] }, notes: [] }), []);
  const f = hostFindings({ configs: { dir: '/var/data/configs', entries: ['plex-data', 'transmission-data', 'sonarr'] }, notes: [] });
  assert.equal(f.length, 1);
  assert.equal(
    formatFinding(f[0]!),
    'app configs: found plex-data, transmission-data in /var/data/configs (the old setup\'s names). Why it matters: the new tree mounts /var/data/configs/<app>, so plex, transmission would start empty. What to do: with k3s stopped (docs/migration.md, step 5): sudo mv -T /var/data/configs/plex-data /var/data/configs/plex; sudo mv -T /var/data/configs/transmission-data /var/data/configs/transmission.',
  );
  const dir = mkdtempSync(join(tmpdir(), 'hb-doctor-configs-'));
  mkdirSync(join(dir, 'plex-data'));
  writeFileSync(join(dir, 'sonarr-data'), 'a file, not a config directory');
  const h = await readHost({ sysClassNet: dir, configsDir: dir });
  assert.deepEqual(h.configs, { dir, entries: ['plex-data'] });
  assert.match(formatFinding(hostFindings(h).find((x) => x.component === 'app configs')!), new RegExp(`sudo mv -T ${dir}/plex-data ${dir}/plex\\.$`));
  const none = await readHost({ sysClassNet: dir, configsDir: join(dir, 'missing') });
  assert.equal(none.configs, undefined);
  assert.match(none.notes.join('\n'), /app config directories not checked: .*missing cannot be read \(ENOENT\)/);
});

// The GitOps tree as Argo CD would see it: a copy of it made a user's own (a key made at run time,
// fixture values encrypted to it by the real sops: the tests never depend on the key the committed
// files use), every app directory built by the real kustomize with ksops on PATH, then every
// object server-side dry-run against a real kube-apiserver that has the real Argo CD, Cilium and
// Prometheus Operator CRDs. Also: the StorageClasses and claims as the apiserver stores them, and
// the real argo-cd chart rendered with the daemon's values (ksops without replacing kustomize).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { parseAllDocuments, parse as parseYaml, stringify } from 'yaml';
import { binDir, binPath, repoRoot } from '../rig/binaries.ts';
import { startControlPlane, type ControlPlane } from '../rig/control-plane.ts';
import { crdNames, installCrds, sharedCrdsDir, waitEstablished } from '../rig/crds.ts';
import { ageKeygen, copyGitopsTree, rekeyCopy, treeOf, type AgeKey } from '../rig/gitops-copy.ts';
import { loadSettings } from '../../src/settings/load.ts';
import { argocdValues } from '../../src/desired/argocd-values.ts';

// Kubernetes objects are open-ended JSON; the tests check shapes field by field.
type Obj = any;

const groups = ['infra', 'apps', 'media'];
// The copy of the tree under test, its key and the fixture values encrypted to it (set in before()).
const work = mkdtempSync(join(tmpdir(), 'hb-dryrun-'));
const root = copyGitopsTree(join(work, 'repo'));
const tree = treeOf(root);
let key: AgeKey;
let FIXTURE_SECRETS: Record<string, Record<string, string>>;

interface Built {
  name: string;
  dir: string;
  usesKsops: boolean;
  yaml: string;
  objects: Obj[];
}

const appDirs = groups.flatMap((g) =>
  readdirSync(join(tree, g))
    .filter((n) => statSync(join(tree, g, n)).isDirectory())
    .map((name) => ({ name, dir: join(tree, g, name) })),
);

function parseDocs(text: string): Obj[] {
  return parseAllDocuments(text).map((d) => d.toJS()).filter((o) => o);
}

/**
 * The standalone kustomize, as Argo CD's repo-server runs it (kustomize.buildOptions
 * `--enable-alpha-plugins --enable-exec`). `kubectl kustomize` has no --enable-exec and silently
 * drops exec generators such as ksops (the build "succeeds" without the Secret), so it cannot
 * stand in for directories with a ksops generator.
 */
function kustomizeBin(): string {
  const p = join(binDir(), 'kustomize');
  if (!existsSync(p)) {
    throw new Error(`test binary 'kustomize' is missing at ${p}; build it with: GOBIN=${binDir()} go install sigs.k8s.io/kustomize/kustomize/v5@v5.8.1`);
  }
  return p;
}

type Run = { status: number | null; stdout: string; stderr: string };

function run(file: string, args: string[], opts: { input?: string; env?: Record<string, string> } = {}): Run {
  const r = spawnSync(file, args, { input: opts.input, env: opts.env, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** ksops is found on PATH and decrypts with SOPS_AGE_KEY_FILE, as on the repo-server. */
function buildEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined) env[k] = v;
  return { ...env, PATH: `${binDir()}${delimiter}${process.env.PATH ?? ''}`, SOPS_AGE_KEY_FILE: key.file, ...extra };
}

function kustomize(dir: string, extraEnv: Record<string, string> = {}): Run {
  return run(kustomizeBin(), ['build', '--enable-alpha-plugins', '--enable-exec', dir], { env: buildEnv(extraEnv) });
}

function kubectlKustomize(dir: string): Run {
  return run(binPath('kubectl'), ['kustomize', dir], { env: buildEnv() });
}

const built: Built[] = [];
let cp: ControlPlane;

function kubectl(args: string[], input?: string): Run {
  return run(binPath('kubectl'), ['--kubeconfig', cp.kubeconfigPath, '--cache-dir', join(cp.dir, 'kubectl-cache'), ...args], { input });
}

/** Server-side dry-run as the field manager Argo CD uses; strict field validation is kubectl's default. */
function dryRun(yaml: string): Run {
  return kubectl(['apply', '--server-side', '--dry-run=server', '--field-manager=argocd-controller', '--validate=strict', '-f', '-'], yaml);
}

before(async () => {
  // Building first: it needs no cluster and its failures are the cheaper ones to read.
  binPath('ksops');
  binPath('sops');
  key = ageKeygen(work);
  FIXTURE_SECRETS = rekeyCopy(root, key.recipient, (secret, k) => `fixture ${secret} ${k}`);
  for (const { name, dir } of appDirs) {
    const usesKsops = existsSync(join(dir, 'ksops-generator.yaml'));
    const r = kustomize(dir);
    assert.equal(r.status, 0, `kustomize build ${name} failed:\n${r.stderr}`);
    built.push({ name, dir, usesKsops, yaml: r.stdout, objects: parseDocs(r.stdout) });
  }
  cp = await startControlPlane({ authorizationMode: 'AlwaysAllow' });
  await installCrds(cp, sharedCrdsDir);
  await waitEstablished(cp, crdNames(sharedCrdsDir), 60_000);
  // The root ApplicationSet creates each namespace on sync (CreateNamespace=true); the rig has no
  // Argo CD, so create them for real, plus argocd for the Applications.
  const namespaces = ['argocd', ...appDirs.map((a) => a.name)].map((n) => ({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: n } }));
  const r = kubectl(['apply', '--server-side', '-f', '-'], namespaces.map((n) => stringify(n)).join('---\n'));
  assert.equal(r.status, 0, r.stderr);
});

after(async () => {
  await cp?.stop();
  rmSync(work, { recursive: true, force: true });
});

describe('kustomize build', () => {
  it('builds every app directory', () => {
    assert.equal(built.length, appDirs.length);
    assert.ok(built.length >= 9, `only ${built.length} app directories`);
    for (const b of built) assert.ok(b.objects.length > 0, `${b.name}: built nothing`);
  });

  it('kubectl kustomize builds every directory without a ksops generator to the same output', () => {
    const plain = built.filter((b) => !b.usesKsops);
    assert.ok(plain.length >= 7);
    for (const b of plain) {
      const r = kubectlKustomize(b.dir);
      assert.equal(r.status, 0, `kubectl kustomize ${b.name}: ${r.stderr}`);
      assert.deepEqual(parseDocs(r.stdout), b.objects, `${b.name}: kubectl kustomize and kustomize disagree`);
    }
  });

  it('ksops decrypts every Secret with the run-time key to the fixture values', () => {
    const secrets = built.flatMap((b) => b.objects.filter((o) => o.kind === 'Secret').map((s) => ({ b, s })));
    assert.deepEqual(secrets.map(({ s }) => `${s.metadata.namespace}/${s.metadata.name}`).sort(), Object.keys(FIXTURE_SECRETS).sort());
    for (const { b, s } of secrets) {
      assert.ok(b.usesKsops, `${b.name}: a Secret that did not come from ksops`);
      const data: Record<string, string> = { ...(s.stringData ?? {}) };
      for (const [k, v] of Object.entries(s.data ?? {})) data[k] = Buffer.from(String(v), 'base64').toString('utf8');
      assert.deepEqual(data, FIXTURE_SECRETS[`${s.metadata.namespace}/${s.metadata.name}`]);
      assert.doesNotMatch(JSON.stringify(s), /ENC\[|"sops"/, `${b.name}: the Secret is still encrypted`);
    }
  });

  it('a ksops directory does not build without the key (so the build above really decrypted)', () => {
    const ksopsDir = built.find((b) => b.usesKsops);
    assert.ok(ksopsDir);
    const r = kustomize(ksopsDir.dir, { SOPS_AGE_KEY_FILE: join(work, 'does-not-exist.txt') });
    assert.notEqual(r.status, 0, 'built without a usable age key');
  });

  it('the built output pins every image and requests resources for every container', () => {
    for (const b of built) {
      for (const o of b.objects) {
        const spec = o.spec?.template?.spec;
        if (!spec) continue;
        for (const c of [...(spec.initContainers ?? []), ...spec.containers]) {
          assert.match(c.image, /:[^:/]*\d[^:/]*$|@sha256:[0-9a-f]{64}$/, `${b.name}/${c.name}: ${c.image} is not pinned`);
          assert.doesNotMatch(c.image, /:latest$/);
          assert.ok(c.resources?.requests?.cpu && c.resources?.requests?.memory, `${b.name}/${c.name}: no requests`);
        }
      }
    }
  });
});

describe('server-side dry-run against the real apiserver and CRDs', () => {
  it('accepts every object of every app directory', () => {
    for (const b of built) {
      const r = dryRun(b.yaml);
      assert.equal(r.status, 0, `${b.name}: rejected:\n${r.stderr}`);
      const applied = r.stdout.split('\n').filter((l) => /serverside-applied \(server dry run\)/.test(l));
      assert.equal(applied.length, b.objects.length, `${b.name}: ${r.stdout}`);
    }
  });

  it('accepts appsets.yaml as an ApplicationSet', () => {
    const r = dryRun(readFileSync(join(tree, 'appsets.yaml'), 'utf8'));
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /applicationset\.argoproj\.io\/homelab serverside-applied/);
  });

  it('accepts the ServiceMonitors and PodMonitors kube-prometheus-stack renders from the values', () => {
    const appl = built.find((b) => b.name === 'monitoring')?.objects.find((o) => o.kind === 'Application');
    assert.ok(appl, 'no kube-prometheus-stack Application in the monitoring build');
    const v = appl.spec.source.helm.valuesObject;
    const release = appl.spec.source.helm.releaseName ?? appl.metadata.name;
    const meta = (m: Obj) => ({ name: m.name, namespace: appl.spec.destination.namespace, labels: { release, ...(m.additionalLabels ?? {}) } });
    const monitors = [
      ...(v.prometheus.additionalServiceMonitors ?? []).map((m: Obj) => ({
        apiVersion: 'monitoring.coreos.com/v1',
        kind: 'ServiceMonitor',
        metadata: meta(m),
        spec: { endpoints: m.endpoints, selector: m.selector, namespaceSelector: m.namespaceSelector },
      })),
      ...(v.prometheus.additionalPodMonitors ?? []).map((m: Obj) => ({
        apiVersion: 'monitoring.coreos.com/v1',
        kind: 'PodMonitor',
        metadata: meta(m),
        spec: { podMetricsEndpoints: m.podMetricsEndpoints, selector: m.selector, namespaceSelector: m.namespaceSelector },
      })),
    ];
    assert.ok(monitors.length >= 2, 'no Cilium/Hubble monitors in the values');
    const r = dryRun(monitors.map((m) => stringify(m)).join('---\n'));
    assert.equal(r.status, 0, r.stderr);
  });

  it('rejects what the CRD schema forbids (the dry-run is not a rubber stamp)', () => {
    const bad = {
      apiVersion: 'monitoring.coreos.com/v1',
      kind: 'ServiceMonitor',
      metadata: { name: 'bad', namespace: 'monitoring' },
      spec: { selector: {}, endpoints: [{ port: 'x', interval: 'every minute' }] },
    };
    const r = dryRun(stringify(bad));
    assert.notEqual(r.status, 0, 'an invalid ServiceMonitor was accepted');
    const typo = parseYaml(readFileSync(join(tree, 'appsets.yaml'), 'utf8'));
    typo.spec.template.spec.syncPolicy.automatic = typo.spec.template.spec.syncPolicy.automated;
    const r2 = dryRun(stringify(typo));
    assert.notEqual(r2.status, 0, 'an unknown field in an ApplicationSet was accepted');
    assert.match(r2.stderr, /automatic/);
  });
});

describe('state on the host: StorageClasses and claims as the apiserver keeps them', () => {
  /** local-path-provisioner's directory for a claim (provisioner.go: nodePath + pathPattern over the claim). */
  const hostDir = (sc: Obj, pvc: Obj): string =>
    join(sc.parameters.nodePath, String(sc.parameters.pathPattern).replace(/\{\{\s*\.PVC\.(Namespace|Name)\s*\}\}/g, (_m, f) => (f === 'Namespace' ? pvc.metadata.namespace : pvc.metadata.name)));

  it('applied for real, each app claim resolves to /var/data/configs/<app> through a Retain class of the k3s provisioner', () => {
    const storage = built.find((b) => b.name === 'storage');
    assert.ok(storage, 'no infra/storage build');
    const claims = built.flatMap((b) => b.objects.filter((o) => o.kind === 'PersistentVolumeClaim'));
    assert.ok(claims.length >= 6, `only ${claims.length} claims`);
    const r = kubectl(['apply', '--server-side', '--field-manager=argocd-controller', '-f', '-'], [storage.yaml, ...claims.map((c) => stringify(c))].join('---\n'));
    assert.equal(r.status, 0, r.stderr);
    const classes = JSON.parse(kubectl(['get', 'storageclasses', '-o', 'json']).stdout).items as Obj[];
    const stored = JSON.parse(kubectl(['get', 'pvc', '--all-namespaces', '-o', 'json']).stdout).items as Obj[];
    for (const name of ['plex', 'sonarr', 'radarr', 'prowlarr', 'overseerr', 'transmission']) {
      const pvc = stored.find((p) => p.metadata.namespace === name);
      assert.ok(pvc, `${name}: no claim stored`);
      const sc = classes.find((c) => c.metadata.name === pvc.spec.storageClassName);
      assert.ok(sc, `${name}: claim names StorageClass ${pvc.spec.storageClassName}, which does not exist`);
      assert.equal(sc.provisioner, 'rancher.io/local-path');
      assert.equal(sc.reclaimPolicy, 'Retain', `${sc.metadata.name}: a deleted claim would take the config with it`);
      assert.equal(sc.volumeBindingMode, 'WaitForFirstConsumer');
      assert.equal(hostDir(sc, pvc), `/var/data/configs/${name}`);
      // Unbound until a pod is scheduled (WaitForFirstConsumer): nothing made a directory yet.
      assert.equal(pvc.status?.phase, 'Pending');
    }
    const data = classes.find((c) => c.metadata.name === 'homelab-data');
    assert.equal(hostDir(data, { metadata: { namespace: 'monitoring', name: 'storage-grafana' } }), '/var/data/configs/monitoring/storage-grafana');
  });

  it('StorageClass parameters are immutable: the apiserver refuses a changed pathPattern (so the tree must get it right once)', () => {
    const storage = built.find((b) => b.name === 'storage')!;
    const changed = storage.objects.map((o) => (o.metadata.name === 'homelab-configs' ? { ...o, parameters: { ...o.parameters, pathPattern: '{{ .PVC.Name }}' } } : o));
    const r = dryRun(changed.map((o) => stringify(o)).join('---\n'));
    assert.notEqual(r.status, 0, 'a changed pathPattern was accepted');
    assert.match(r.stderr, /parameters.*(immutable|Forbidden)|Forbidden.*parameters/is);
  });
});

describe('the real argo-cd chart with the daemon\'s values', () => {
  // Beside ../shared/crds, where the rig finds the CRDs.
  const chart = join(sharedCrdsDir, '..', 'charts', 'argo-cd-10.1.1.tgz');

  it('renders a repo-server that keeps Argo CD\'s kustomize and finds ksops on PATH', () => {
    const settings = loadSettings(join(repoRoot, 'examples', 'homelab.json'));
    const r = run(binPath('helm'), ['template', 'argocd', chart, '--namespace', 'argocd', '-f', '-'], {
      input: JSON.stringify(argocdValues(settings)),
      env: { ...(process.env as Record<string, string>), HELM_CACHE_HOME: join(work, 'helm-cache'), HELM_CONFIG_HOME: join(work, 'helm-config'), HELM_DATA_HOME: join(work, 'helm-data') },
    });
    assert.equal(r.status, 0, r.stderr);
    const repoServer = parseDocs(r.stdout).find((o) => o.kind === 'Deployment' && o.metadata.name === 'argocd-repo-server');
    assert.ok(repoServer, 'no argocd-repo-server Deployment');
    const spec = repoServer.spec.template.spec;
    const main = spec.containers.find((c: Obj) => c.name === 'repo-server');
    assert.ok(main, 'no repo-server container');
    const mounts: Obj[] = main.volumeMounts ?? [];
    assert.ok(mounts.some((m) => m.mountPath === '/usr/local/bin/ksops' && m.subPath === 'ksops' && m.name === 'custom-tools'), 'ksops is not on PATH');
    for (const m of mounts) {
      assert.notEqual(m.mountPath, '/usr/local/bin/kustomize', 'Argo CD\'s kustomize is replaced');
      assert.notEqual(m.mountPath.replace(/\/$/, ''), '/usr/local/bin', '/usr/local/bin is hidden by a mount');
    }
    assert.ok(!(main.env ?? []).some((e: Obj) => e.name === 'PATH'), 'PATH overridden: the image\'s /usr/local/bin may not be on it');
    const init = (spec.initContainers ?? []).find((c: Obj) => c.name === 'install-ksops');
    assert.deepEqual(init?.command, ['/usr/local/bin/ksops', 'install', '/custom-tools']);
    assert.ok(spec.volumes.some((v: Obj) => v.name === 'custom-tools' && v.emptyDir));
    // The patched Deployment is one the real apiserver accepts as it stands.
    const applied = dryRun(stringify({ ...repoServer, metadata: { ...repoServer.metadata, namespace: 'argocd' } }));
    assert.equal(applied.status, 0, applied.stderr);
    // The build options reach argocd-cm, where the repo-server reads them.
    const cm = parseDocs(r.stdout).find((o) => o.kind === 'ConfigMap' && o.metadata.name === 'argocd-cm');
    assert.match(cm?.data?.['kustomize.buildOptions'] ?? '', /--enable-alpha-plugins.*--enable-exec/);
  });
});

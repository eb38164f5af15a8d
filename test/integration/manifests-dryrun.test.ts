// The GitOps tree as Argo CD would see it: every app directory built by the real `kubectl kustomize`
// (ksops on PATH, decrypting with the throwaway test key), then every object server-side dry-run
// against a real kube-apiserver that has the real Argo CD, Cilium and Prometheus Operator CRDs.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { parseAllDocuments, parse as parseYaml, stringify } from 'yaml';
import { binDir, binPath, repoRoot } from '../rig/binaries.ts';
import { startControlPlane, type ControlPlane } from '../rig/control-plane.ts';
import { crdNames, installCrds, sharedCrdsDir, waitEstablished } from '../rig/crds.ts';

// Kubernetes objects are open-ended JSON; the tests check shapes field by field.
type Obj = any;

const tree = join(repoRoot, 'manifests', 'argocd-homelab');
const groups = ['infra', 'apps', 'media'];
const testKey = join(repoRoot, 'test', 'fixtures', 'age', 'test-key.txt');
// Throwaway values the committed secrets.enc.yaml files were encrypted with.
const FIXTURE_SECRETS: Record<string, Record<string, string>> = {
  'transmission/transmission-vpn': { OPENVPN_USERNAME: 'test-user', OPENVPN_PASSWORD: 'test-password' },
  'monitoring/grafana-admin': { 'admin-user': 'admin', 'admin-password': 'test-password' },
};

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
  return { ...env, PATH: `${binDir()}${delimiter}${process.env.PATH ?? ''}`, SOPS_AGE_KEY_FILE: testKey, ...extra };
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

  it('ksops decrypts the committed secrets with the test key to the fixture values', () => {
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
    const r = kustomize(ksopsDir.dir, { SOPS_AGE_KEY_FILE: join(repoRoot, 'test', 'fixtures', 'age', 'does-not-exist.txt') });
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

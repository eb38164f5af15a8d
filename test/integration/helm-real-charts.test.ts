// The Helm steps with the real upstream charts (../shared/charts) against a real apiserver and
// the real helm (HB_HELM=helm4: Helm 4, see helm4-real-charts.test.ts):
// - a no-op starts no helm process (a recording shim first on PATH counts them), a changed
//   value or chart version still upgrades;
// - Cilium moves one minor version at a time: 1.18.4 -> 1.20.0 is refused with the version to
//   pin, while what needs Cilium goes on; 1.18.4 -> 1.19.6 upgrades;
// - Argo CD CRDs left without Helm ownership (an Argo CD once installed from manifests) are
//   taken over; CRDs another Helm release owns are not;
// - an apiserver restart in the middle of helm's install is retried and converges.
// Nothing here waits for Pods (cilium.waitForReady: false): no test needs a node for this.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { binDir, binPath, repoRoot } from '../rig/binaries.ts';
import { startControlPlane, type ControlPlane } from '../rig/control-plane.ts';
import { auditMark, countRequests } from '../rig/audit.ts';
import { kubeJson } from '../rig/kube-http.ts';
import { installCrds, sharedCrdsDir } from '../rig/crds.ts';
import { apiserverControl, type ApiserverControl } from '../rig/restart.ts';
import { helmUnderTest, type HelmShim } from '../rig/helm-shim.ts';
import { linesLogger, runHelmStep, useHelmShim } from '../rig/helm-run.ts';
import { parseSettings } from '../../src/settings/load.ts';
import type { Settings, SettingsInput } from '../../src/settings/schema.ts';
import { Credentials } from '../../src/credentials.ts';
import { createAdapters } from '../../src/adapters/index.ts';
import type { Change, Step, StepContext } from '../../src/steps/types.ts';
import { ciliumStep } from '../../src/steps/cilium.ts';
import { argocdStep } from '../../src/steps/argocd.ts';
import { runSteps } from '../../src/engine/run.ts';
import { readReleaseHistory } from '../../src/adapters/helm-storage.ts';

const HELM = helmUnderTest();
const charts = resolve(process.env.HB_SHARED_DIR ?? resolve(repoRoot, '..', 'shared'), 'charts');
const CILIUM = (v: '1.18.4' | '1.19.6' | '1.20.0') => join(charts, `cilium-${v}.tgz`);
const ARGOCD = join(charts, 'argo-cd-10.1.1.tgz');
const ARGOCD_CRDS = ['applications.argoproj.io', 'applicationsets.argoproj.io', 'appprojects.argoproj.io'];

describe(`Helm steps with the real charts (${HELM})`, () => {
  let cp: ControlPlane;
  let work: string;
  let shim: HelmShim;
  let api: ApiserverControl | undefined;
  const { log, lines: logLines } = linesLogger();

  const get = async (path: string) => (await kubeJson<any>(cp.rig, 'GET', path)).json;
  const latest = async (name: string, ns: string) => {
    const h = await readReleaseHistory(createAdapters(settings(), new Credentials(settings()), log).kube, name, ns);
    return { revisions: h.length, ...(await h[0]?.decode()) };
  };
  /** helm's own view, so the test does not only trust the daemon's reading of Helm storage. */
  const helmHistory = (name: string, ns: string) =>
    JSON.parse(
      execFileSync(binPath(HELM), ['history', name, '--namespace', ns, '--output', 'json', '--kubeconfig', cp.kubeconfigPath], {
        encoding: 'utf8',
        env: { PATH: `${binDir()}:/usr/bin:/bin`, HOME: join(work, 'test-helm-home') },
      }),
    ) as Array<{ revision: number; status: string; chart: string }>;

  function settings(over: Partial<SettingsInput> = {}): Settings {
    return parseSettings({
      domain: 'example.org',
      kubeconfigFile: cp.kubeconfigPath,
      network: { lbPool: { start: '192.168.0.240', stop: '192.168.0.250' }, ingressIP: '192.168.0.240' },
      gitops: { repoURL: 'https://github.com/example/homelab.git' },
      cilium: { chart: { path: CILIUM('1.18.4') }, waitForReady: false },
      // The redis secret-init Job is a pre-install hook that only a Job controller completes.
      argocd: { chart: { path: ARGOCD }, values: { redisSecretInit: { enabled: false } } },
      ...over,
    });
  }
  const cilium = (v: '1.18.4' | '1.19.6' | '1.20.0', values: Record<string, unknown> = {}) => settings({ cilium: { chart: { path: CILIUM(v) }, waitForReady: false, values } });

  function context(s: Settings, signal = AbortSignal.timeout(300_000)): StepContext {
    const credentials = new Credentials(s);
    // One state directory for the suite, as the daemon keeps one across boots.
    return { settings: s, log, signal, credentials, adapters: createAdapters(s, credentials, log, { stateDir: join(work, 'state') }), upstream: {}, progress: () => {} };
  }

  const run = <W, H>(step: Step<W, H>, s: Settings, opts?: { planOnly?: boolean }) => runHelmStep(shim, step, context(s), opts);
  const writes = (changes: Change[]) => changes.filter((c) => c.action !== 'noop');

  before(async () => {
    binPath(HELM);
    cp = await startControlPlane();
    work = mkdtempSync(join(tmpdir(), 'hb-helm-real-'));
    shim = useHelmShim(work);
  });

  after(async () => {
    await api?.dispose();
    await cp?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('cilium 1.18.4: installs with one helm process; the no-op after it starts none and writes nothing', async () => {
    const first = await run(ciliumStep, cilium('1.18.4'));
    assert.deepEqual(first.changes.map((c) => [c.action, c.target]), [['create', 'HelmRelease kube-system/cilium']]);
    assert.deepEqual(first.spawned, ['upgrade']);

    // The installing run read back the record helm wrote (megabytes, decoded once) and
    // remembered it: no no-op reads it again.
    for (const [round, expected] of [
      ['first', [['list secrets', 1]]],
      ['second', [['list secrets', 1]]],
    ] as const) {
      const mark = await auditMark(cp);
      const again = await run(ciliumStep, cilium('1.18.4'));
      const counts = await countRequests(cp, { since: mark });
      assert.deepEqual(writes(again.changes), []);
      assert.deepEqual(again.spawned, [], 'a no-op starts no helm process');
      assert.equal(counts.writes, 0, JSON.stringify(counts.byResource));
      // Discovery of /api/v1 aside (a run shares it with every step): Helm's records, listed as metadata.
      const reads = Object.entries(counts.byResource).filter(([k]) => !k.startsWith('get /api'));
      assert.deepEqual(reads, expected, `the ${round} no-op`);
    }
    assert.deepEqual(helmHistory('cilium', 'kube-system').map((h) => [h.revision, h.status, h.chart]), [[1, 'deployed', 'cilium-1.18.4']]);
  });

  it('a changed value still upgrades (one helm process), then no-op again', async () => {
    const s = cilium('1.18.4', { hubble: { relay: { enabled: false }, ui: { enabled: false } } });
    const changed = await run(ciliumStep, s);
    assert.deepEqual(changed.changes[0]!.diff, [{ path: '$.values.hubble.relay.enabled', from: true, to: false }, { path: '$.values.hubble.ui.enabled', from: true, to: false }]);
    assert.deepEqual(changed.spawned, ['upgrade']);
    assert.equal(((await latest('cilium', 'kube-system')).values as any).hubble.relay.enabled, false);
    const again = await run(ciliumStep, s);
    assert.deepEqual([writes(again.changes), again.spawned], [[], []]);
  });

  it('a field someone else changed (kubectl edit) does not block the next upgrade', async () => {
    // Scale the operator by hand: another field manager now owns .spec.replicas.
    await kubeJson(cp.rig, 'PATCH', '/apis/apps/v1/namespaces/kube-system/deployments/cilium-operator?fieldManager=kubectl-edit', {
      contentType: 'application/merge-patch+json',
      body: { spec: { replicas: 2 } },
    });
    const mark = logLines.length;
    const s = cilium('1.18.4', { hubble: { relay: { enabled: false }, ui: { enabled: false } }, operator: { prometheus: { enabled: false } } });
    const up = await run(ciliumStep, s);
    assert.equal(up.changes[0]!.action, 'update');
    assert.equal((await latest('cilium', 'kube-system')).status, 'deployed');
    assert.equal(((await latest('cilium', 'kube-system')).values as any).operator.prometheus.enabled, false);
    if (HELM === 'helm4') {
      // Server-side apply conflicts with kubectl-edit; the release's owner takes the field back.
      assert.deepEqual(up.spawned, ['upgrade', 'upgrade']);
      assert.ok(logLines.slice(mark).some((l) => /kubectl-edit changed fields of the release's objects; taking them back/.test(l)));
      assert.equal((await get('/apis/apps/v1/namespaces/kube-system/deployments/cilium-operator')).spec.replicas, 1);
    } else {
      // Helm 3's three-way merge leaves a field the chart did not change alone.
      assert.deepEqual(up.spawned, ['upgrade']);
    }
    // Back to the values the later tests start from.
    assert.deepEqual((await run(ciliumStep, cilium('1.18.4', { hubble: { relay: { enabled: false }, ui: { enabled: false } } }))).spawned.length > 0, true);
  });

  it('1.18.4 -> 1.20.0 is refused with the version to pin; what needs Cilium still runs; nothing is written', async () => {
    const s = cilium('1.20.0', { hubble: { relay: { enabled: false }, ui: { enabled: false } } });
    const before = helmHistory('cilium', 'kube-system').length;
    const plan = await run(ciliumStep, s, { planOnly: true });
    assert.deepEqual(plan.changes.map((c) => [c.action, c.target]), [['conflict', 'HelmRelease kube-system/cilium']]);
    assert.match(plan.changes[0]!.detail ?? '', /from 1\.18\.4 to 1\.20\.0: Cilium upgrades one minor version at a time; pin cilium\.chart\.version \(or cilium\.chart\.path\) to 1\.19\.x first/);

    // Through the engine: cilium reports the conflict (exit 4, not retried), a step that needs it still runs.
    const ran: string[] = [];
    const dependent: Step = {
      name: 'cilium-crds',
      needs: ['cilium'],
      want: () => ({}),
      have: async () => ({}),
      changes: () => [],
      change: async () => {},
      outputs: () => (ran.push('cilium-crds'), {}),
      rendered: () => ({}),
    };
    shim.reset();
    const reports = await runSteps([{ ...ciliumStep, needs: [] }, dependent], { mode: 'apply', settings: s, log, context: (_st, _up, signal) => context(s, signal) });
    assert.equal(reports[0]!.outcome, 'conflict');
    assert.match(reports[0]!.error ?? '', /HelmRelease kube-system\/cilium: refusing to upgrade Cilium from 1\.18\.4 to 1\.20\.0.*pin cilium\.chart\.version .* to 1\.19\.x first/);
    assert.equal(reports[0]!.attempts, 1, 'a refusal is not retried');
    assert.equal(reports[1]!.outcome, 'unchanged');
    assert.deepEqual(ran, ['cilium-crds']);
    assert.deepEqual(shim.calls(), [], 'a refused upgrade starts no helm');
    assert.equal(helmHistory('cilium', 'kube-system').length, before);
    assert.equal((await latest('cilium', 'kube-system')).chart?.version, '1.18.4');
  });

  it('1.18.4 -> 1.19.6 upgrades; 1.19.6 -> 1.18.4 (an older minor) is refused', async () => {
    const s = cilium('1.19.6', { hubble: { relay: { enabled: false }, ui: { enabled: false } } });
    const up = await run(ciliumStep, s);
    assert.deepEqual(up.changes[0]!.diff?.find((d) => d.path === '$.chart'), { path: '$.chart', from: 'cilium-1.18.4', to: 'cilium-1.19.6' });
    assert.deepEqual(up.spawned, ['upgrade']);
    assert.deepEqual(helmHistory('cilium', 'kube-system').at(-1), { ...helmHistory('cilium', 'kube-system').at(-1)!, status: 'deployed', chart: 'cilium-1.19.6' });
    assert.deepEqual((await run(ciliumStep, s)).spawned, []);

    const down = await run(ciliumStep, cilium('1.18.4', { hubble: { relay: { enabled: false }, ui: { enabled: false } } }), { planOnly: true });
    assert.equal(down.changes[0]!.action, 'conflict');
    assert.match(down.changes[0]!.detail ?? '', /1\.18\.4 is an older minor version/);
  });

  it('argo-cd: CRDs owned by another Helm release are not taken; unowned leftovers are taken over and it converges', async () => {
    // An Argo CD installed from its manifests once: the CRDs exist, with no Helm ownership.
    await installCrds(cp, join(sharedCrdsDir, 'argocd'));
    const crdPath = (n: string) => `/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${n}`;
    const annotate = (annotations: Record<string, string | null>) =>
      Promise.all(ARGOCD_CRDS.map((n) => kubeJson(cp.rig, 'PATCH', crdPath(n), { contentType: 'application/merge-patch+json', body: { metadata: { annotations } } })));

    // First as if another Helm release had them: helm's refusal is passed on, naming the owner.
    await annotate({ 'meta.helm.sh/release-name': 'old-argo', 'meta.helm.sh/release-namespace': 'argocd' });
    await assert.rejects(run(argocdStep, settings()), /CustomResourceDefinition "[a-z.]+argoproj\.io" belongs to Helm release argocd\/old-argo; uninstall that release/);
    for (const n of ARGOCD_CRDS) assert.equal((await get(crdPath(n))).metadata.annotations['meta.helm.sh/release-name'], 'old-argo', `${n} kept its owner`);
    assert.equal((await readReleaseHistory(context(settings()).adapters.kube, 'argocd', 'argocd')).length, 0, 'nothing installed');

    // The CRDs left by manifests, but a Service of the chart another release owns: helm names
    // only the first object it refuses, so the daemon looks at the rest before taking over.
    await annotate({ 'meta.helm.sh/release-name': null, 'meta.helm.sh/release-namespace': null });
    await kubeJson(cp.rig, 'POST', '/api/v1/namespaces', { body: { metadata: { name: 'argocd' } }, allow: [409] });
    const service = {
      metadata: {
        name: 'argocd-server',
        namespace: 'argocd',
        labels: { 'app.kubernetes.io/managed-by': 'Helm' },
        annotations: { 'meta.helm.sh/release-name': 'old-argo', 'meta.helm.sh/release-namespace': 'argocd' },
      },
      spec: { ports: [{ port: 80 }] },
    };
    await kubeJson(cp.rig, 'POST', '/api/v1/namespaces/argocd/services', { body: service });
    await assert.rejects(
      run(argocdStep, settings()),
      /CustomResourceDefinition "[a-z.]+argoproj\.io" exists without Helm ownership, but Service argocd\/argocd-server \(release argocd\/old-argo\) belong to other Helm releases/,
    );
    for (const n of ARGOCD_CRDS) assert.equal((await get(crdPath(n))).metadata.annotations?.['meta.helm.sh/release-name'], undefined, `${n} not taken`);
    await kubeJson(cp.rig, 'DELETE', '/api/v1/namespaces/argocd/services/argocd-server');

    // Left by manifests (no Helm metadata at all), nothing of another release: taken over.
    const mark = logLines.length;
    const first = await run(argocdStep, settings());
    assert.deepEqual(first.changes.map((c) => [c.action, c.target]), [['create', 'HelmRelease argocd/argocd']]);
    assert.deepEqual(first.spawned, ['upgrade', 'template', 'upgrade'], 'refused once, the chart checked for objects of other releases, then installed with --take-ownership');
    assert.ok(logLines.slice(mark).some((l) => /exists without Helm ownership.*taking it over into HelmRelease argocd\/argocd/.test(l)));
    for (const n of ARGOCD_CRDS) {
      const crd = await get(crdPath(n));
      assert.equal(crd.metadata.annotations['meta.helm.sh/release-name'], 'argocd', n);
      assert.equal(crd.metadata.annotations['meta.helm.sh/release-namespace'], 'argocd', n);
      assert.equal(crd.metadata.labels['app.kubernetes.io/managed-by'], 'Helm', n);
    }
    assert.deepEqual(helmHistory('argocd', 'argocd').map((h) => [h.revision, h.status, h.chart]), [[1, 'deployed', 'argo-cd-10.1.1']]);
    assert.ok(await get('/apis/apps/v1/namespaces/argocd/deployments/argocd-repo-server'));
    const again = await run(argocdStep, settings());
    assert.deepEqual([writes(again.changes), again.spawned], [[], []]);
  });

  it('an apiserver restart in the middle of helm install is retried and converges', async (t) => {
    const s = settings();
    // A fresh release, so the interrupted operation is an install of the real chart (its big
    // CRDs make the install last long enough to be cut in the middle).
    execFileSync(binPath(HELM), ['uninstall', 'argocd', '--namespace', 'argocd', '--kubeconfig', cp.kubeconfigPath], {
      env: { PATH: `${binDir()}:/usr/bin:/bin`, HOME: join(work, 'test-helm-home') },
    });
    api = apiserverControl(cp);
    let interrupted = false;
    // Once helm has stored the pending-install record it is creating the chart's objects: kill
    // the apiserver then, and bring it back two seconds later, as a k3s restart does.
    const chaos = (async () => {
      const deadline = performance.now() + 120_000;
      while (performance.now() < deadline) {
        const r = await kubeJson<any>(cp.rig, 'GET', '/api/v1/namespaces/argocd/secrets/sh.helm.release.v1.argocd.v1', { allow: [404] }).catch(() => undefined);
        if (r?.status === 200 && r.json?.metadata?.labels?.status === 'pending-install') {
          await api!.stop();
          interrupted = true;
          await new Promise((res) => setTimeout(res, 2000));
          await api!.start();
          return;
        }
        await new Promise((res) => setTimeout(res, 10));
      }
    })();
    const mark = logLines.length;
    const reports = await runSteps([{ ...argocdStep, needs: [] }], {
      mode: 'apply',
      settings: s,
      log,
      retry: { attempts: 8, baseMs: 500, maxMs: 3000 },
      context: (_st, _up, signal) => context(s, signal),
    });
    await chaos;
    assert.ok(interrupted, 'the apiserver went down while helm was installing');
    assert.equal(reports[0]!.outcome, 'changed', reports[0]!.error);
    assert.ok(reports[0]!.attempts >= 2, `retried (${reports[0]!.attempts} attempts)`);
    const retried = logLines.slice(mark).filter((l) => l.includes('attempt 1 failed'));
    t.diagnostic(`helm's failure: ${(JSON.parse(retried[0] ?? '{}') as { err?: string }).err?.slice(0, 300)}`);
    assert.match(retried.join('\n'), /helm upgrade: .*(unexpected EOF|EOF|connection refused|connection reset by peer|http2: client connection lost|i\/o timeout|TLS handshake timeout|Kubernetes cluster unreachable)/);
    assert.equal(helmHistory('argocd', 'argocd').at(-1)!.status, 'deployed');
    assert.deepEqual((await run(argocdStep, s)).spawned, [], 'converged: the next run is a no-op');
  });
});

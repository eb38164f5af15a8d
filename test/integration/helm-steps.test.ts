// The cilium and argocd steps against a real kube-apiserver with controllers and a kwok node,
// the real helm binary and the real upstream charts. Steps are driven the way the engine drives
// them: want, have, changes, change.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { binDir, binPath } from '../rig/binaries.ts';
import { helmUnderTest, type HelmShim } from '../rig/helm-shim.ts';
import { linesLogger, runHelmStep, useHelmShim } from '../rig/helm-run.ts';
import { startControlPlane, type ControlPlane } from '../rig/control-plane.ts';
import { argocdChart, ciliumChart } from '../rig/charts.ts';
import { pinnedImage } from '../rig/pins.ts';
import { NODE_NAME, NOT_READY_ANNOTATION, START_AFTER_ANNOTATION } from '../rig/node-sim.ts';
import { auditMark, countRequests } from '../rig/audit.ts';
import { kubeJson } from '../rig/kube-http.ts';
import { parseSettings } from '../../src/settings/load.ts';
import type { Settings, SettingsInput } from '../../src/settings/schema.ts';
import { Credentials } from '../../src/credentials.ts';
import { createAdapters } from '../../src/adapters/index.ts';
import type { Change, Step, StepContext } from '../../src/steps/types.ts';
import { ciliumStep, createCiliumStep } from '../../src/steps/cilium.ts';
import { argocdStep } from '../../src/steps/argocd.ts';
import { readiness, RolloutTimeoutError } from '../../src/steps/rollout.ts';
import { ciliumValues } from '../../src/desired/cilium-values.ts';
import { argocdValues } from '../../src/desired/argocd-values.ts';
import { isTransient } from '../../src/engine/errors.ts';
import { readReleaseHistory } from '../../src/adapters/helm-storage.ts';

// HB_HELM=helm4 runs this suite against Helm 4 (helm4-steps.test.ts); Helm 3 otherwise.
const HELM = helmUnderTest();
// One minor below the newest local chart, so that the repository test below has a one-minor upgrade to make.
const CILIUM_CHART = ciliumChart('1.19.6');
const ARGOCD_CHART = argocdChart();

// ---------------------------------------------------------------------------------------------
// Pure parts first: the readiness rules, without a cluster (planning: test/unit/helm-release.test.ts).

describe('readiness (pure)', () => {
  const meta = { name: 'x', namespace: 'kube-system', generation: 2 };
  it('a DaemonSet is ready when every scheduled pod is updated and available at the current generation', () => {
    const ds = (status: object) => ({ apiVersion: 'apps/v1', kind: 'DaemonSet', metadata: meta, status });
    assert.equal(readiness('DaemonSet', undefined).summary, 'not found');
    assert.equal(readiness('DaemonSet', ds({ observedGeneration: 1, desiredNumberScheduled: 1, updatedNumberScheduled: 1, numberAvailable: 1 })).ready, false);
    assert.equal(readiness('DaemonSet', ds({ observedGeneration: 2 })).summary, 'no node scheduled yet');
    assert.equal(readiness('DaemonSet', ds({ observedGeneration: 2, desiredNumberScheduled: 1, updatedNumberScheduled: 1, numberAvailable: 0 })).summary, '0 of 1 available');
    assert.equal(readiness('DaemonSet', ds({ observedGeneration: 2, desiredNumberScheduled: 1, updatedNumberScheduled: 1, numberAvailable: 1 })).ready, true);
  });
  it('a Deployment is ready when all replicas are updated and available and no old one is left', () => {
    const dep = (status: object) => ({ apiVersion: 'apps/v1', kind: 'Deployment', metadata: meta, spec: { replicas: 1 }, status });
    assert.equal(readiness('Deployment', dep({ observedGeneration: 2, replicas: 2, updatedReplicas: 1, availableReplicas: 1 })).summary, '1 old replicas pending termination');
    const stuck = dep({ observedGeneration: 2, updatedReplicas: 0, conditions: [{ type: 'Progressing', status: 'False', reason: 'ProgressDeadlineExceeded' }] });
    assert.match(readiness('Deployment', stuck).summary, /progress deadline exceeded/);
    assert.equal(readiness('Deployment', dep({ observedGeneration: 2, replicas: 1, updatedReplicas: 1, availableReplicas: 1 })).ready, true);
  });
});

// ---------------------------------------------------------------------------------------------
// Against the real apiserver and the real helm.

describe(`helm steps against a real apiserver (${HELM})`, () => {
  let cp: ControlPlane;
  let work: string;
  let repoServer: Server | undefined;
  let shim: HelmShim;
  const progress: string[] = [];
  const { log, lines: logLines } = linesLogger();

  const helmEnv = () => ({ PATH: `${binDir()}:/usr/bin:/bin`, HOME: join(work, 'test-helm-home') });
  /** helm run by the test itself (not by the code under test). */
  const helm = (...args: string[]) => execFileSync(binPath(HELM), [...args, '--kubeconfig', cp.kubeconfigPath], { encoding: 'utf8', env: helmEnv() });
  const history = (name: string, ns: string) =>
    JSON.parse(helm('history', name, '--namespace', ns, '--output', 'json')) as Array<{ revision: number; status: string; chart: string }>;
  const deployedValues = (name: string, ns: string) => JSON.parse(helm('get', 'values', name, '--namespace', ns, '--output', 'json')) as unknown;
  const get = async (path: string) => (await kubeJson<any>(cp.rig, 'GET', path)).json;

  function settings(over: Partial<SettingsInput> = {}): Settings {
    return parseSettings({
      domain: 'example.org',
      kubeconfigFile: cp.kubeconfigPath,
      network: { lbPool: { start: '192.168.0.240', stop: '192.168.0.250' }, ingressIP: '192.168.0.240' },
      gitops: { repoURL: 'https://github.com/example/homelab.git' },
      cilium: { chart: { path: CILIUM_CHART }, waitForReady: false },
      argocd: { chart: { path: ARGOCD_CHART } },
      ...over,
    });
  }

  function context(s: Settings): StepContext {
    const credentials = new Credentials(s);
    return {
      settings: s,
      log,
      signal: AbortSignal.timeout(120_000),
      credentials,
      adapters: createAdapters(s, credentials, log),
      upstream: {},
      progress: (t) => void progress.push(t),
    };
  }

  const run = <W, H>(step: Step<W, H>, s: Settings, opts?: { planOnly?: boolean }) => runHelmStep(shim, step, context(s), opts);

  /** Rewrites a stored revision's status, as a helm killed mid-operation leaves it. */
  async function setRevisionStatus(name: string, ns: string, revision: number, status: string) {
    const path = `/api/v1/namespaces/${ns}/secrets/sh.helm.release.v1.${name}.v${revision}`;
    const secret = await get(path);
    // Helm stores base64(gzip(JSON)) in the Secret's data, which the API base64s once more.
    const release = JSON.parse(gunzipSync(Buffer.from(Buffer.from(secret.data.release, 'base64').toString(), 'base64')).toString());
    release.info.status = status;
    secret.data.release = Buffer.from(gzipSync(JSON.stringify(release)).toString('base64')).toString('base64');
    secret.metadata.labels.status = status;
    await kubeJson(cp.rig, 'PUT', path, { body: secret });
  }

  const writes = (changes: Change[]) => changes.filter((c) => c.action !== 'noop');

  before(async () => {
    binPath(HELM); // a missing binary fails here with the build command, never a skip
    // Controllers and a kwok node: Pods run and turn Ready, and argo-cd's pre-install hook Job completes.
    cp = await startControlPlane({ controllers: true });
    work = mkdtempSync(join(tmpdir(), 'hb-helm-'));
    shim = useHelmShim(work);
  });

  after(async () => {
    repoServer?.close();
    await cp?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('cold install: both releases from the real charts, values reach the apiserver', async () => {
    const s = settings();
    const plan = await run(ciliumStep, s, { planOnly: true });
    assert.deepEqual(plan.changes.map((c) => [c.action, c.target]), [['create', 'HelmRelease kube-system/cilium']]);

    const cilium = await run(ciliumStep, s);
    assert.deepEqual(cilium.spawned, ['upgrade'], 'cold install: one helm process, upgrade --install (the release and the chart are read without helm)');
    assert.deepEqual(cilium.calls, { upgrade: 1 });
    const argocd = await run(argocdStep, s);
    assert.deepEqual(argocd.changes.map((c) => [c.action, c.target]), [['create', 'HelmRelease argocd/argocd']]);

    for (const [name, ns] of [['cilium', 'kube-system'], ['argocd', 'argocd']] as const) {
      assert.deepEqual(history(name, ns).map((h) => [h.revision, h.status]), [[1, 'deployed']], `${name} history`);
    }
    // helm stored exactly the generated values as the user-supplied values.
    assert.deepEqual(deployedValues('cilium', 'kube-system'), ciliumValues(s));
    assert.deepEqual(deployedValues('argocd', 'argocd'), argocdValues(s));

    const cm = await get('/api/v1/namespaces/kube-system/configmaps/cilium-config');
    assert.equal(cm.data['kube-proxy-replacement'], 'true');
    assert.equal(cm.data.ipam, 'kubernetes');
    const operator = await get('/apis/apps/v1/namespaces/kube-system/deployments/cilium-operator');
    assert.equal(operator.spec.replicas, 1);
    const agent = (await get('/apis/apps/v1/namespaces/kube-system/daemonsets/cilium')).spec.template.spec;
    const env = Object.fromEntries(agent.containers.find((c: any) => c.name === 'cilium-agent').env.map((e: any) => [e.name, e.value]));
    assert.equal(env.KUBERNETES_SERVICE_HOST, '127.0.0.1');
    assert.equal(env.KUBERNETES_SERVICE_PORT, '6444');
    assert.ok(agent.volumes.some((v: any) => v.hostPath?.path === '/var/lib/rancher/k3s/data/cni'), 'k3s CNI bin path mounted');
    const ingressSvc = await get('/api/v1/namespaces/kube-system/services/cilium-ingress');
    assert.equal(ingressSvc.metadata.annotations['lbipam.cilium.io/ips'], '192.168.0.240');

    // The ksops patch as the apiserver holds it.
    const repo = (await get('/apis/apps/v1/namespaces/argocd/deployments/argocd-repo-server')).spec.template.spec;
    const init = repo.initContainers.find((c: any) => c.name === 'install-ksops');
    assert.equal(init.image, pinnedImage('viaductoss/ksops'));
    assert.deepEqual(init.command, ['/usr/local/bin/ksops', 'install', '/custom-tools']);
    assert.ok(repo.volumes.find((v: any) => v.name === 'custom-tools' && v.emptyDir));
    assert.equal(repo.volumes.find((v: any) => v.name === 'sops-age').secret.secretName, 'sops-age-key');
    const main = repo.containers[0];
    // Argo CD's own kustomize stays (ksops' older one would break Helm 4's `helm version`); only ksops is added.
    assert.ok(!main.volumeMounts.some((m: any) => m.mountPath === '/usr/local/bin/kustomize'), 'Argo CD keeps its own kustomize');
    assert.ok(main.volumeMounts.find((m: any) => m.mountPath === '/usr/local/bin/ksops' && m.subPath === 'ksops'));
    assert.equal(main.env.find((e: any) => e.name === 'SOPS_AGE_KEY_FILE').value, '/.config/sops/age/keys.txt');
    assert.equal((await get('/api/v1/namespaces/argocd/configmaps/argocd-cmd-params-cm')).data['server.insecure'], 'true');
    assert.equal((await get('/api/v1/namespaces/argocd/configmaps/argocd-cm')).data['kustomize.buildOptions'], '--enable-alpha-plugins --enable-exec --enable-helm');
    const ingress = await get('/apis/networking.k8s.io/v1/namespaces/argocd/ingresses/argocd-server');
    assert.equal(ingress.spec.ingressClassName, 'cilium');
    assert.equal(ingress.spec.rules[0].host, 'argocd.example.org');

    // Values went in on stdin: no value shows in helm's argv, and helm lives under $STATE_DIRECTORY.
    const argvLines = logLines.filter((l) => l.includes('"helm":["upgrade"'));
    assert.ok(argvLines.length >= 2, 'upgrade argv logged at debug');
    for (const l of argvLines) {
      assert.ok(l.includes('"--values","-"'), l);
      assert.ok(!l.includes('192.168.0.240') && !l.includes('ksops'), `a value in argv: ${l}`);
    }
    assert.ok(existsSync(join(work, 'state', 'helm', 'cache')));
  });

  it('a second apply is a no-op: no new revision, zero writes', async () => {
    const s = settings();
    // helm gets a minimal environment: these would make it look elsewhere if they leaked through.
    const leak = { HELM_DRIVER: 'memory', HELM_NAMESPACE: 'elsewhere', KUBECONFIG: '/nonexistent' };
    Object.assign(process.env, leak);
    const mark = await auditMark(cp);
    let cilium, argocd;
    try {
      cilium = await run(ciliumStep, s);
      argocd = await run(argocdStep, s);
    } finally {
      for (const k of Object.keys(leak)) delete process.env[k];
    }
    const counts = await countRequests(cp, { since: mark });
    assert.deepEqual(writes(cilium.changes), []);
    assert.deepEqual(writes(argocd.changes), []);
    assert.match(cilium.changes[0]!.detail ?? '', /cilium-1\.19\.6 deployed with the desired values \(revision 1\)/);
    assert.deepEqual([cilium.spawned, argocd.spawned], [[], []], 'no-op: no helm process at all');
    assert.deepEqual(cilium.calls, {});
    assert.equal(counts.writes, 0, `writes: ${JSON.stringify(counts.byResource)}`);
    assert.ok(counts.reads > 0, 'the no-op did read the releases');
    assert.equal(history('cilium', 'kube-system').length, 1);
    assert.equal(history('argocd', 'argocd').length, 1);
  });

  it('changing one value: the plan shows that field, apply makes revision 2, then no-op again', async () => {
    const s = settings({ cilium: { chart: { path: CILIUM_CHART }, waitForReady: false, values: { hubble: { relay: { enabled: false }, ui: { enabled: false } } } } });
    const plan = await run(ciliumStep, s, { planOnly: true });
    assert.equal(plan.changes.length, 1);
    assert.equal(plan.changes[0]!.action, 'update');
    assert.deepEqual(plan.changes[0]!.diff, [{ path: '$.values.hubble.relay.enabled', from: true, to: false }, { path: '$.values.hubble.ui.enabled', from: true, to: false }]);
    assert.equal(history('cilium', 'kube-system').length, 1, 'plan writes nothing');

    await run(ciliumStep, s);
    assert.deepEqual(history('cilium', 'kube-system').map((h) => [h.revision, h.status]), [[1, 'superseded'], [2, 'deployed']]);
    assert.equal((deployedValues('cilium', 'kube-system') as any).hubble.relay.enabled, false);
    assert.deepEqual(writes((await run(ciliumStep, s)).changes), []);
  });

  it('recovers a release stuck in pending-upgrade: roll back, then upgrade', async () => {
    const s = settings({ cilium: { chart: { path: CILIUM_CHART }, waitForReady: false, values: { hubble: { relay: { enabled: false }, ui: { enabled: false } } } } });
    // What a helm killed during the upgrade to revision 2 leaves: 1 still deployed, 2 pending.
    await setRevisionStatus('cilium', 'kube-system', 1, 'deployed');
    await setRevisionStatus('cilium', 'kube-system', 2, 'pending-upgrade');
    const direct = spawnSync(binPath(HELM), ['upgrade', 'cilium', CILIUM_CHART, '--namespace', 'kube-system', '--kubeconfig', cp.kubeconfigPath], { encoding: 'utf8', env: helmEnv() });
    assert.notEqual(direct.status, 0);
    assert.match(direct.stderr, /another operation \(install\/upgrade\/rollback\) is in progress/, 'the crafted state is the real failure');

    const plan = await run(ciliumStep, s, { planOnly: true });
    assert.deepEqual(plan.changes.map((c) => c.action), ['update', 'update']);
    assert.match(plan.changes[0]!.detail ?? '', /revision 2 is stuck in pending-upgrade.*roll back to revision 1/);
    // Revision 1 had relay on; the upgrade after the rollback turns it off again.
    assert.deepEqual(plan.changes[1]!.diff, [{ path: '$.values.hubble.relay.enabled', from: true, to: false }, { path: '$.values.hubble.ui.enabled', from: true, to: false }]);

    await run(ciliumStep, s);
    const h = history('cilium', 'kube-system');
    // helm leaves the interrupted revision's record as it was; only the latest one gates writes.
    assert.deepEqual(h.map((x) => [x.revision, x.status]), [[1, 'superseded'], [2, 'pending-upgrade'], [3, 'superseded'], [4, 'deployed']]);
    assert.equal((h[2] as { description?: string }).description, 'Rollback to 1');
    assert.equal((deployedValues('cilium', 'kube-system') as any).hubble.relay.enabled, false);
    assert.deepEqual(writes((await run(ciliumStep, s)).changes), []);
  });

  it('recovers a first install stuck in pending-install: uninstall, then install', async () => {
    const s = settings();
    await setRevisionStatus('argocd', 'argocd', 1, 'pending-install');
    const plan = await run(argocdStep, s, { planOnly: true });
    assert.deepEqual(plan.changes.map((c) => [c.action, c.target]), [['delete', 'HelmRelease argocd/argocd'], ['create', 'HelmRelease argocd/argocd']]);
    assert.match(plan.changes[0]!.detail ?? '', /pending-install and no revision was ever deployed/);

    await run(argocdStep, s);
    assert.deepEqual(history('argocd', 'argocd').map((x) => [x.revision, x.status]), [[1, 'deployed']]);
    assert.ok(await get('/apis/apps/v1/namespaces/argocd/deployments/argocd-repo-server'), 'reinstalled objects exist');
    assert.deepEqual(writes((await run(argocdStep, s)).changes), []);
  });

  /** The Pods of the agent DaemonSet on the simulated node, with their Ready condition. */
  const agentPods = async () =>
    ((await get(`/api/v1/namespaces/kube-system/pods?labelSelector=k8s-app%3Dcilium&fieldSelector=spec.nodeName%3D${NODE_NAME}`)).items as any[]).map((p) => ({
      name: p.metadata.name as string,
      deleting: Boolean(p.metadata.deletionTimestamp),
      annotated: p.metadata.annotations?.[NOT_READY_ANNOTATION] === 'true',
      ready: (p.status?.conditions ?? []).some((c: any) => c.type === 'Ready' && c.status === 'True'),
    }));

  it('readiness wait: Pods that never turn Ready end in a bounded error naming each workload', async () => {
    // The agent's new Pod runs on the kwok node but never passes its readiness probe (a crash loop,
    // on purpose); the operator's new Pod selects a node that does not exist and is never scheduled.
    const values = {
      hubble: { relay: { enabled: false }, ui: { enabled: false } },
      podAnnotations: { [NOT_READY_ANNOTATION]: 'true' },
      operator: { nodeSelector: { 'kubernetes.io/os': 'windows' } },
    };
    const s = settings({ cilium: { chart: { path: CILIUM_CHART }, waitForReady: true, values } });
    const step = createCiliumStep({ rolloutTimeoutMs: 8000, pollMs: 200 });
    const ctx = context(s);
    const want = step.want(s, {});
    const have = await step.have(ctx, want);
    const changes = step.changes(want, have);
    assert.deepEqual(changes.map((c) => [c.action, c.target]), [['update', 'HelmRelease kube-system/cilium'], ['wait', 'DaemonSet kube-system/cilium'], ['wait', 'Deployment kube-system/cilium-operator']]);
    const started = Date.now();
    await assert.rejects(step.change(ctx, changes, want, have), (err: Error) => {
      assert.ok(err instanceof RolloutTimeoutError, String(err));
      assert.match(err.message, /^cilium not ready after 8 s: DaemonSet kube-system\/cilium: 0 of 1 available; Deployment kube-system\/cilium-operator: 0 of 1 available$/);
      return true;
    });
    // The helm upgrade, then at most the bound and one poll.
    assert.ok(Date.now() - started < 60_000, 'bounded');
    assert.ok(isTransient(new RolloutTimeoutError('x')), 'the engine may retry it: image pulls clear by themselves');
    assert.ok(progress.some((p) => p.startsWith('waiting for cilium')), 'progress reported');
    const pods = (await agentPods()).filter((p) => !p.deleting);
    assert.deepEqual(pods.map((p) => [p.annotated, p.ready]), [[true, false]], 'the controllers replaced the agent Pod with one that kwok keeps not Ready');
    const operatorPods = (await get('/api/v1/namespaces/kube-system/pods?labelSelector=name%3Dcilium-operator')).items.filter((p: any) => !p.metadata.deletionTimestamp);
    assert.deepEqual(operatorPods.map((p: any) => [p.status.phase, p.spec.nodeName]), [['Pending', undefined]], 'the new operator Pod found no node');
  });

  it('readiness wait: ends once the controllers have rolled out Pods that kwok reports Ready', async () => {
    // The new agent Pod takes 8 s to start: longer than the helm upgrade, so the wait sees it not Ready first.
    const values = { hubble: { relay: { enabled: false }, ui: { enabled: false } }, podAnnotations: { [START_AFTER_ANNOTATION]: '8s' } };
    const s = settings({ cilium: { chart: { path: CILIUM_CHART }, waitForReady: true, values } });
    const step = createCiliumStep({ rolloutTimeoutMs: 60_000, pollMs: 200 });
    const ctx = context(s);
    const want = step.want(s, {});
    const have = await step.have(ctx, want);
    const changes = step.changes(want, have);
    assert.deepEqual(changes.map((c) => [c.action, c.target]), [['update', 'HelmRelease kube-system/cilium'], ['wait', 'DaemonSet kube-system/cilium'], ['wait', 'Deployment kube-system/cilium-operator']]);
    const before = logLines.length;
    const seen = progress.length;
    await step.change(ctx, changes, want, have);
    // It did wait: the agent was not ready at first (the new Pod had to be made, scheduled and started).
    assert.ok(progress.slice(seen).some((p) => /waiting for cilium .*DaemonSet kube-system\/cilium: (?!ready)/.test(p)), progress.slice(seen).join('\n'));
    const done = logLines.slice(before).map((l) => JSON.parse(l)).find((l) => l.event === 'rollout' && typeof l.waitedMs === 'number');
    assert.ok(done, 'the end of the wait is logged');
    assert.match(done.msg, /^cilium is ready: DaemonSet kube-system\/cilium: ready \(1 of 1\); Deployment kube-system\/cilium-operator: ready \(1 of 1\)$/);
    const pods = (await agentPods()).filter((p) => !p.deleting);
    assert.deepEqual(pods.map((p) => [p.annotated, p.ready]), [[false, true]], 'a Ready agent Pod without the annotation');

    // Ready and unchanged: nothing left to do, not even a wait.
    assert.deepEqual(writes((await run(step, s)).changes), []);
    assert.deepEqual((await run(step, s)).changes.filter((c) => c.action === 'wait'), []);
  });

  it('adapter: the given values replace the stored ones, even an empty set (--reset-values)', async () => {
    const s = settings();
    const { helm: h, kube } = context(s).adapters;
    // What helm stored, read as the daemon reads it (Helm's release Secrets) and as helm reports it.
    const latest = async () => (await readReleaseHistory(kube, 'probe', 'hb-probe'))[0]?.decode();
    // A second argo-cd beside the first: its objects are named after the release; the CRDs stay with the first.
    const base = { crds: { install: false } };
    const spec = { name: 'probe', namespace: 'hb-probe', chart: { path: ARGOCD_CHART }, values: { ...base, server: { replicas: 3 } } as Record<string, unknown> };
    await h.upgradeInstall(spec, { timeoutMs: 120_000 });
    assert.deepEqual((await latest())?.values, { ...base, server: { replicas: 3 } });
    assert.deepEqual(deployedValues('probe', 'hb-probe'), { ...base, server: { replicas: 3 } });
    await h.upgradeInstall({ ...spec, values: base }, { timeoutMs: 120_000 });
    assert.deepEqual((await latest())?.values, base, 'helm would reuse the old values without --reset-values');
    assert.deepEqual(deployedValues('probe', 'hb-probe'), base);
    assert.deepEqual([(await latest())?.revision, (await latest())?.status, (await latest())?.chart], [2, 'deployed', { name: 'argo-cd', version: '10.1.1' }]);
    await h.uninstall('probe', 'hb-probe', { timeoutMs: 120_000 });
    assert.equal(await latest(), undefined);
  });

  it('a chart from a Helm repository (--repo, pinned version) upgrades when the version changes', async () => {
    // A local chart repository holding the next minor's real chart, plus its index.
    const repoDir = join(work, 'repo');
    mkdirSync(repoDir, { recursive: true });
    copyFileSync(ciliumChart('1.20.0'), join(repoDir, 'cilium-1.20.0.tgz'));
    repoServer = createServer((req, res) => {
      const file = join(repoDir, (req.url ?? '/').split('?')[0]!.replace(/^\/+/, ''));
      if (!file.startsWith(repoDir) || !existsSync(file)) return void res.writeHead(404).end();
      res.writeHead(200).end(readFileSync(file));
    });
    await new Promise<void>((r) => repoServer!.listen(0, '127.0.0.1', r));
    const addr = repoServer.address();
    assert.ok(addr && typeof addr === 'object');
    const url = `http://127.0.0.1:${addr.port}`;
    execFileSync(binPath(HELM), ['repo', 'index', repoDir, '--url', url], { env: helmEnv() });

    const s = settings({
      // The deployed values, so that only the chart differs.
      cilium: { chart: { repo: url, chart: 'cilium', version: '1.20.0' }, waitForReady: false, values: deployedValues('cilium', 'kube-system') as Record<string, unknown> },
    });
    const plan = await run(ciliumStep, s, { planOnly: true });
    assert.deepEqual(plan.changes[0]!.diff, [{ path: '$.chart', from: 'cilium-1.19.6', to: 'cilium-1.20.0' }]);
    assert.deepEqual(plan.spawned, [], 'planning a repository chart starts no helm either');
    await run(ciliumStep, s);
    assert.equal(history('cilium', 'kube-system').at(-1)!.chart, 'cilium-1.20.0');
    assert.deepEqual(writes((await run(ciliumStep, s)).changes), []);
  });
});

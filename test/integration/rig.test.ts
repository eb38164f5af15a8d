// The rig is what every integration test stands on, so it is tested against itself first:
// if these fail, no other integration failure means anything.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'node:https';
import { createInterface } from 'node:readline';
import { binPath } from '../rig/binaries.ts';
import { startControlPlane, type ControlPlane } from '../rig/control-plane.ts';
import { CILIUM_CRDS, installCrds, isEstablished, playCiliumOperator, sharedCrdsDir, waitEstablished } from '../rig/crds.ts';
import { auditMark, countRequests } from '../rig/audit.ts';
import { endpointFromKubeconfig, kubeJson, kubeRequest } from '../rig/kube-http.ts';
import { NODE_LABELS, NODE_NAME, NOT_READY_ANNOTATION } from '../rig/node-sim.ts';

// A killed process whose new parent has not reaped it yet is a zombie: dead, though kill(0) works.
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

async function until(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('binPath', () => {
  it('throws with the build command when a binary is missing, instead of skipping', () => {
    const saved = process.env.HB_BIN_DIR;
    const empty = mkdtempSync(join(tmpdir(), 'hb-nobin-'));
    process.env.HB_BIN_DIR = empty;
    try {
      assert.throws(() => binPath('kube-apiserver'), /kube-apiserver.*bash scripts\/test-binaries\.sh/);
    } finally {
      if (saved === undefined) delete process.env.HB_BIN_DIR;
      else process.env.HB_BIN_DIR = saved;
      rmSync(empty, { recursive: true });
    }
  });
});

describe('control plane', () => {
  let cp: ControlPlane;
  before(async () => {
    cp = await startControlPlane();
  });
  after(async () => {
    await cp?.stop();
  });

  it('answers the token from its kubeconfig and refuses anyone else', async (t) => {
    t.diagnostic(`apiserver ready in ${cp.readyMs} ms`);
    const ep = endpointFromKubeconfig(cp.kubeconfigPath);
    assert.equal(ep.server, cp.server);
    assert.match(cp.server, /^https:\/\/127\.0\.0\.1:\d+$/);
    assert.equal((await kubeRequest(ep, 'GET', '/readyz')).status, 200);
    assert.equal((await kubeRequest(ep, 'GET', '/readyz', { token: null })).status, 401);
    assert.equal((await kubeRequest(ep, 'GET', '/api/v1/namespaces', { token: 'not-the-token' })).status, 401);
    const version = await kubeJson<{ gitVersion: string }>(ep, 'GET', '/version');
    assert.match(version.json?.gitVersion ?? '', /^v1\.36\./);
  });

  it('gives a kubeconfig that the real kubectl accepts', () => {
    const res = spawnSync(binPath('kubectl'), ['--kubeconfig', cp.kubeconfigPath, '--cache-dir', join(cp.dir, 'kubectl-cache'), 'get', 'namespace', 'default', '-o', 'name'], {
      encoding: 'utf8',
    });
    assert.equal(res.status, 0, res.stderr);
    assert.equal(res.stdout.trim(), 'namespace/default');
  });

  it('plays cilium-operator: the Cilium CRDs appear only after the delay', async () => {
    const started = Date.now();
    const play = playCiliumOperator(cp, 1500);
    for (const name of CILIUM_CRDS) assert.equal(await isEstablished(cp, name), false, `${name} exists before the operator ran`);
    await waitEstablished(cp, CILIUM_CRDS, 30_000);
    assert.ok(Date.now() - started >= 1500, 'the CRDs appeared before the delay ran out');
    assert.deepEqual((await play.done).sort(), [...CILIUM_CRDS].sort());
  });

  it('installs the real Argo CD, Cilium and Prometheus Operator CRDs and they become Established', async () => {
    const names = await installCrds(cp, ['argocd', 'cilium', 'prometheus-operator'].map((g) => join(sharedCrdsDir, g)));
    assert.equal(names.length, 15);
    for (const n of ['applicationsets.argoproj.io', 'ciliuml2announcementpolicies.cilium.io', 'servicemonitors.monitoring.coreos.com']) {
      assert.ok(names.includes(n), n);
    }
    await waitEstablished(cp, names, 120_000);
    const served = async (groupVersion: string) =>
      (await kubeJson<{ resources: { name: string }[] }>(cp.rig, 'GET', `/apis/${groupVersion}`)).json?.resources.map((r) => r.name) ?? [];
    assert.ok((await served('argoproj.io/v1alpha1')).includes('applicationsets'));
    assert.ok((await served('cilium.io/v2')).includes('ciliumloadbalancerippools'));
    assert.ok((await served('cilium.io/v2alpha1')).includes('ciliuml2announcementpolicies'));
    assert.ok((await served('monitoring.coreos.com/v1')).includes('servicemonitors'));
  });

  it('counts exactly the requests the test user made', async () => {
    const ep = endpointFromKubeconfig(cp.kubeconfigPath);
    const base = '/api/v1/namespaces/default/configmaps';
    const since = await auditMark(cp);
    await kubeJson(ep, 'POST', base, { body: { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'audit-probe' }, data: { a: '1' } } });
    await kubeJson(ep, 'GET', `${base}/audit-probe`);
    await kubeJson(ep, 'GET', `${base}/audit-probe`);
    await kubeJson(ep, 'PATCH', `${base}/audit-probe`, { body: { data: { a: '2' } }, contentType: 'application/merge-patch+json' });
    // The rig's own traffic must not leak into the test user's counts.
    await kubeJson(cp.rig, 'GET', `${base}/audit-probe`);

    const counts = await countRequests(cp, { since });
    assert.deepEqual(counts.byVerb, { create: 1, get: 2, patch: 1 });
    assert.deepEqual(counts.byResource, { 'create configmaps': 1, 'get configmaps': 2, 'patch configmaps': 1 });
    assert.equal(counts.reads, 2);
    assert.equal(counts.writes, 2);
    assert.equal(counts.other, 0);
    assert.ok(counts.events.every((e) => e.user.username === cp.user));

    const rigCounts = await countRequests(cp, { since, user: cp.rigUser });
    // The rig's GET, and the barrier requests that closed both counts.
    assert.equal(rigCounts.byResource['get configmaps'], 3);

    // A watch is counted once, whether it is still open (ResponseStarted) or over (ResponseComplete).
    const beforeWatch = await auditMark(cp);
    const watch = request(new URL(`${base}?watch=1`, ep.server), { ca: ep.ca, headers: { authorization: `Bearer ${ep.token}` } });
    await new Promise<void>((resolve, reject) => {
      watch.once('response', () => resolve());
      watch.once('error', reject);
      watch.end();
    });
    assert.deepEqual((await countRequests(cp, { since: beforeWatch })).byResource, { 'watch configmaps': 1 });
    watch.destroy();
    await until('the watch is over', () => watch.destroyed);
    assert.deepEqual((await countRequests(cp, { since: beforeWatch })).byResource, { 'watch configmaps': 1 });

    const quiet = await countRequests(cp, { since: await auditMark(cp) });
    assert.deepEqual({ reads: quiet.reads, writes: quiet.writes, other: quiet.other }, { reads: 0, writes: 0, other: 0 });
  });

  it('stop() ends etcd and the apiserver and removes the directory', async () => {
    const { etcd, apiserver } = cp.pids;
    assert.ok(alive(etcd) && alive(apiserver));
    await cp.stop();
    assert.equal(alive(etcd), false, 'etcd still running');
    assert.equal(alive(apiserver), false, 'kube-apiserver still running');
    assert.equal(existsSync(cp.dir), false);
    await cp.stop(); // idempotent, so after() may call it again
  });
});

describe('a control plane does not outlive its test process', () => {
  const controlPlaneUrl = new URL('../rig/control-plane.ts', import.meta.url).href;

  // A child process starts a control plane, prints its pids, then ends as `how` says.
  async function orphanCheck(how: 'SIGKILL' | 'throw'): Promise<{ pids: number[]; dir: string }> {
    const script = `
      import { startControlPlane } from ${JSON.stringify(controlPlaneUrl)};
      const cp = await startControlPlane({ log: () => {} });
      console.log(JSON.stringify({ pids: [cp.pids.etcd, cp.pids.apiserver], dir: cp.dir }));
      if (${JSON.stringify(how)} === 'throw') setTimeout(() => { throw new Error('test failed badly'); }, 100);
      else setInterval(() => {}, 1000);
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise((r) => child.once('exit', r));
    const [line] = await Promise.race([
      createInterface({ input: child.stdout })[Symbol.asyncIterator]().next().then((r) => [r.value as string | undefined]),
      exited.then(() => [undefined]),
    ]);
    assert.ok(line, `child did not start a control plane: ${stderr}`);
    const info = JSON.parse(line) as { pids: number[]; dir: string };
    if (how === 'SIGKILL') child.kill('SIGKILL');
    await exited;
    return info;
  }

  it('a SIGKILLed test process takes etcd and the apiserver with it', async () => {
    const { pids, dir } = await orphanCheck('SIGKILL');
    try {
      await until('etcd and kube-apiserver are gone', () => pids.every((p) => !alive(p)));
    } finally {
      // Nothing in a SIGKILLed process can remove its directory; only the processes are promised.
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a test process that dies of an uncaught error stops the control plane and removes its directory', async () => {
    const { pids, dir } = await orphanCheck('throw');
    await until('etcd and kube-apiserver are gone', () => pids.every((p) => !alive(p)));
    assert.equal(existsSync(dir), false);
  });
});

describe('control plane with controllers and a kwok node', () => {
  let cp: ControlPlane;
  let bare: number | undefined;
  type Pod = { metadata: { name: string; deletionTimestamp?: string }; spec: { nodeName?: string }; status?: { phase?: string; conditions?: { type: string; status: string }[] } };
  const get = async <T = any>(path: string) => (await kubeJson<T>(cp.rig, 'GET', path, { allow: [404] })).json;
  const create = (path: string, body: object) => kubeJson(cp.rig, 'POST', path, { body });
  const pods = async (ns: string, selector: string) =>
    ((await get<{ items: Pod[] }>(`/api/v1/namespaces/${ns}/pods?labelSelector=${encodeURIComponent(selector)}`))?.items ?? []).filter((p) => !p.metadata.deletionTimestamp);
  const ready = (p: Pod) => p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true;
  async function eventually(what: string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting until ${what}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  const podSpec = (extra: object = {}) => ({ containers: [{ name: 'main', image: 'registry.k8s.io/pause:3.10' }], ...extra });

  before(async () => {
    cp = await startControlPlane({ controllers: true });
  });
  after(async () => {
    await cp?.stop();
  });

  it('starts the controllers and a Ready node with the labels k3s gives a server', async (t) => {
    t.diagnostic(`ready in ${cp.readyMs} ms, of which controllers and node ${cp.controllersMs} ms`);
    bare = cp.readyMs - cp.controllersMs;
    assert.ok(cp.controllersMs > 0);
    const node = await get(`/api/v1/nodes/${NODE_NAME}`);
    assert.equal(node.status.conditions.find((c: any) => c.type === 'Ready').status, 'True');
    for (const [k, v] of Object.entries(NODE_LABELS)) assert.equal(node.metadata.labels[k], v, k);
    assert.deepEqual(node.spec.taints ?? [], [], 'no taint: charts without tolerations schedule too');
  });

  it('a Deployment makes a ReplicaSet, whose Pods are scheduled on the node and turn Ready; the Deployment reports available', async () => {
    await create('/apis/apps/v1/namespaces/default/deployments', {
      metadata: { name: 'web' },
      spec: { replicas: 2, selector: { matchLabels: { app: 'web' } }, template: { metadata: { labels: { app: 'web' } }, spec: podSpec({ initContainers: [{ name: 'init', image: 'busybox:1.37' }] }) } },
    });
    await eventually('web has 2 available replicas', async () => (await get('/apis/apps/v1/namespaces/default/deployments/web')).status?.availableReplicas === 2);
    const rs = await get<{ items: unknown[] }>('/apis/apps/v1/namespaces/default/replicasets?labelSelector=app%3Dweb');
    assert.equal(rs?.items.length, 1);
    const ps = await pods('default', 'app=web');
    assert.equal(ps.length, 2);
    for (const p of ps) {
      assert.equal(p.spec.nodeName, NODE_NAME);
      assert.equal(p.status?.phase, 'Running');
      assert.ok(ready(p));
    }
  });

  it('a hostNetwork DaemonSet selecting linux nodes (as Cilium’s agent) runs one Ready Pod on the node', async () => {
    await create('/apis/apps/v1/namespaces/kube-system/daemonsets', {
      metadata: { name: 'agent' },
      spec: {
        selector: { matchLabels: { app: 'agent' } },
        template: { metadata: { labels: { app: 'agent' } }, spec: podSpec({ hostNetwork: true, nodeSelector: { 'kubernetes.io/os': 'linux' }, tolerations: [{ operator: 'Exists' }] }) },
      },
    });
    await eventually('agent is available', async () => (await get('/apis/apps/v1/namespaces/kube-system/daemonsets/agent')).status?.numberAvailable === 1);
    const [p] = await pods('kube-system', 'app=agent');
    assert.equal(p?.spec.nodeName, NODE_NAME);
    assert.ok(p && ready(p));
  });

  it('a Job’s Pod runs to completion and the Job completes (what helm waits for on a hook)', async () => {
    await create('/apis/batch/v1/namespaces/default/jobs', { metadata: { name: 'once' }, spec: { template: { spec: podSpec({ restartPolicy: 'Never' }) } } });
    await eventually('the Job completes', async () => ((await get('/apis/batch/v1/namespaces/default/jobs/once')).status?.succeeded ?? 0) === 1);
  });

  it('a Pod marked not-ready runs but never turns Ready; one whose nodeSelector matches no node stays Pending', async () => {
    await create('/api/v1/namespaces/default/pods', { metadata: { name: 'sick', annotations: { [NOT_READY_ANNOTATION]: 'true' } }, spec: podSpec() });
    await create('/api/v1/namespaces/default/pods', { metadata: { name: 'homeless' }, spec: podSpec({ nodeSelector: { 'kubernetes.io/os': 'windows' } }) });
    await eventually('sick runs', async () => (await get<Pod>('/api/v1/namespaces/default/pods/sick'))?.status?.phase === 'Running');
    await new Promise((r) => setTimeout(r, 1500));
    const sick = (await get<Pod>('/api/v1/namespaces/default/pods/sick'))!;
    assert.equal(ready(sick), false);
    const homeless = (await get<Pod>('/api/v1/namespaces/default/pods/homeless'))!;
    assert.equal(homeless.status?.phase, 'Pending');
    assert.equal(homeless.spec.nodeName, undefined);
    assert.ok(homeless.status?.conditions?.some((c) => c.type === 'PodScheduled' && c.status === 'False'), 'the scheduler found no node');
  });

  it('garbage collection: deleting a Deployment removes its ReplicaSet and Pods', async () => {
    await kubeJson(cp.rig, 'DELETE', '/apis/apps/v1/namespaces/default/deployments/web');
    await eventually('web’s Pods and ReplicaSet are gone', async () => {
      const rs = await get<{ items: unknown[] }>('/apis/apps/v1/namespaces/default/replicasets?labelSelector=app%3Dweb');
      return rs?.items.length === 0 && (await pods('default', 'app=web')).length === 0;
    });
  });

  it('deleting a namespace deletes what is in it, then the namespace itself', async () => {
    await create('/api/v1/namespaces', { metadata: { name: 'doomed' } });
    await create('/apis/apps/v1/namespaces/doomed/deployments', {
      metadata: { name: 'app' },
      spec: { replicas: 1, selector: { matchLabels: { app: 'x' } }, template: { metadata: { labels: { app: 'x' } }, spec: podSpec() } },
    });
    await create('/api/v1/namespaces/doomed/configmaps', { metadata: { name: 'c' }, data: { a: '1' } });
    await eventually('the Pod runs', async () => (await pods('doomed', 'app=x')).some(ready));
    await kubeJson(cp.rig, 'DELETE', '/api/v1/namespaces/doomed');
    await eventually('the namespace is gone', async () => (await kubeJson(cp.rig, 'GET', '/api/v1/namespaces/doomed', { allow: [404] })).status === 404);
  });

  it('stop() ends every process', async (t) => {
    t.diagnostic(`start-up without controllers would have been about ${bare} ms`);
    const pids = Object.values(cp.pids);
    assert.equal(pids.length, 5);
    assert.ok(pids.every(alive));
    await cp.stop();
    for (const p of pids) assert.equal(alive(p), false, `pid ${p} still running`);
  });
});

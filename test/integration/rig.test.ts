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

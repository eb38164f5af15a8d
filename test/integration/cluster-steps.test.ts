// preflight, cilium-crds, cilium-l2, age-key and root-appset against a REAL kube-apiserver (the
// rig), driven the way the engine drives a step: want → have → changes → change. The real
// Cilium and Argo CD CRDs from ../shared/crds validate what is applied; the apiserver's audit
// log counts what each run wrote.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { parse as parseYaml } from 'yaml';
import { binPath } from '../rig/binaries.ts';
import { startControlPlane, type ControlPlane } from '../rig/control-plane.ts';
import { CILIUM_CRDS, installCrds, playCiliumOperator, sharedCrdsDir } from '../rig/crds.ts';
import { auditMark, countRequests, type RequestCounts } from '../rig/audit.ts';
import { kubeJson } from '../rig/kube-http.ts';
import { parseSettings } from '../../src/settings/load.ts';
import type { Settings } from '../../src/settings/schema.ts';
import { Credentials } from '../../src/credentials.ts';
import { createAdapters, type Adapters } from '../../src/adapters/index.ts';
import { createLogger } from '../../src/log.ts';
import { KubeApiError, KubeClient, OWNER_LABEL } from '../../src/adapters/kube.ts';
import { isTransient, TransientError } from '../../src/engine/errors.ts';
import { isWrite, type Change, type Outputs, type Step, type StepContext } from '../../src/steps/types.ts';
import { makePreflightStep, preflightStep } from '../../src/steps/preflight.ts';
import { ciliumCrdsStep, makeCiliumCrdsStep } from '../../src/steps/cilium-crds.ts';
import { ciliumL2Step } from '../../src/steps/cilium-l2.ts';
import { ageKeyStep } from '../../src/steps/age-key.ts';
import { rootAppsetStep } from '../../src/steps/root-appset.ts';

// ---- harness -----------------------------------------------------------------------------

/** Every log line of the whole file, to check at the end that no key byte ever reached one. */
const logLines: string[] = [];
const sink = new Writable({
  write(chunk: Buffer | string, _enc, cb) {
    for (const l of chunk.toString().split('\n')) if (l) logLines.push(l);
    cb();
  },
});
const log = createLogger({ destination: sink, level: 'debug', pretty: false });
const logsSince = (n: number) => logLines.slice(n).map((l) => JSON.parse(l) as { level: string; msg: string; [k: string]: unknown });

interface Run {
  changes: Change[];
  outputs: Outputs;
  progress: string[];
}

/** One process's worth of adapters: a fresh KubeClient (cold discovery cache), as at boot. */
function adaptersFor(settings: Settings): { adapters: Adapters; credentials: Credentials } {
  const credentials = new Credentials(settings, undefined);
  return { adapters: createAdapters(settings, credentials, log), credentials };
}

async function drive<W, H>(step: Step<W, H>, settings: Settings, upstream: Outputs, env = adaptersFor(settings), signal = AbortSignal.timeout(120_000)): Promise<Run> {
  const progress: string[] = [];
  const ctx: StepContext = {
    settings,
    log: log.child({ step: step.name }),
    signal,
    credentials: env.credentials,
    adapters: env.adapters,
    upstream,
    progress: (t) => progress.push(t),
  };
  const want = step.want(settings, upstream);
  const have = await step.have(ctx, want);
  const changes = step.changes(want, have);
  let outputs: Outputs = step.outputs?.(want, have) ?? {};
  if (changes.some((c) => c.action !== 'noop')) outputs = { ...outputs, ...((await step.change(ctx, changes, want, have)) ?? {}) };
  return { changes, outputs, progress };
}

const summary = (cs: Change[]) => cs.map((c) => `${c.action} ${c.target}`);
const writesOf = (cs: Change[]) => cs.filter(isWrite);

/** An age identity made by the real age-keygen (so the parser is checked against age itself). */
function ageKeygen(): { text: string; recipient: string } {
  const text = execFileSync(binPath('age-keygen'), [], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const recipient = /# public key: (age1\S+)/.exec(text)?.[1];
  assert.ok(recipient, 'age-keygen printed a public key comment');
  return { text, recipient };
}

/** Fails if any substring of the key (raw, or its base64) of 12+ characters is in `text`. */
function assertNoKeyBytes(text: string, keyText: string, what: string) {
  const secretLines = keyText.split('\n').filter((l) => l.startsWith('AGE-SECRET-KEY-1'));
  const b64 = Buffer.from(keyText).toString('base64');
  for (const s of [...secretLines.map((l) => l.slice('AGE-SECRET-KEY-1'.length)), b64]) {
    for (let i = 0; i + 12 <= s.length; i += 6) assert.ok(!text.includes(s.slice(i, i + 12)), `${what} contains key bytes`);
  }
}

function settingsFor(kubeconfigFile: string, ageKeyFile: string, stop = '192.168.0.250'): Settings {
  return parseSettings({
    domain: 'example.org',
    kubeconfigFile,
    network: { lbPool: { start: '192.168.0.240', stop }, ingressIP: '192.168.0.240', interfaces: ['^eth0$'] },
    sops: { ageKeyFile },
    gitops: { repoURL: 'https://github.com/example/homelab.git', path: 'k8s/argocd-homelab' },
  });
}

/**
 * Drives the five steps as the engine would: preflight, then age-key, cilium-crds → cilium-l2,
 * and root-appset side by side (root-appset's real need, argocd, belongs to another suite).
 */
async function driveAll(settings: Settings): Promise<Record<string, Run>> {
  const env = adaptersFor(settings);
  try {
    const preflight = await drive(preflightStep, settings, {}, env);
    const l2Branch = async () => {
      const crds = await drive(ciliumCrdsStep, settings, preflight.outputs, env);
      return [crds, await drive(ciliumL2Step, settings, crds.outputs, env)] as const;
    };
    const [ageKey, [crds, l2], appset] = await Promise.all([drive(ageKeyStep, settings, preflight.outputs, env), l2Branch(), drive(rootAppsetStep, settings, {}, env)]);
    return { preflight, 'age-key': ageKey, 'cilium-crds': crds, 'cilium-l2': l2, 'root-appset': appset };
  } finally {
    env.adapters.kube.close();
  }
}

function describeCounts(c: RequestCounts): string {
  return `reads ${c.reads}, writes ${c.writes}: ${JSON.stringify(c.byResource)}`;
}

// ---- the suite ---------------------------------------------------------------------------

describe('cluster steps against a real kube-apiserver', () => {
  let cp: ControlPlane;
  let dir: string;
  let keyFile: string;
  let key: { text: string; recipient: string };
  /** Every key the suite made, for the final log check. */
  const keys: string[] = [];
  const settings = () => settingsFor(cp.kubeconfigPath, keyFile);

  before(async () => {
    cp = await startControlPlane();
    dir = mkdtempSync(join(tmpdir(), 'hb-cluster-steps-'));
    keyFile = join(dir, 'keys.txt');
    key = ageKeygen();
    keys.push(key.text);
    writeFileSync(keyFile, key.text, { mode: 0o600 });
  });
  after(async () => {
    await cp?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('cilium-crds: CRDs that never appear end the step within its bound, naming each missing CRD', async () => {
    const step = makeCiliumCrdsStep({ waitMs: 2_000 });
    const env = adaptersFor(settings());
    await env.adapters.kube.readyz(); // connect first: the bound is about the wait, not the first import
    const started = performance.now();
    const run = drive(step, settings(), {}, env);
    await assert.rejects(run, (e: Error) => {
      assert.match(e.message, /ciliumloadbalancerippools\.cilium\.io \(not found\)/);
      assert.match(e.message, /ciliuml2announcementpolicies\.cilium\.io \(not found\)/);
      assert.match(e.message, /gave up after 2 s/);
      return true;
    });
    const ms = performance.now() - started;
    env.adapters.kube.close();
    assert.ok(ms >= 1_900 && ms < 4_000, `ended after ${Math.round(ms)} ms, bound 2000 ms`);
  });

  it('cilium-crds: the step timeout (ctx.signal) also ends the wait with the names', async () => {
    const step = makeCiliumCrdsStep({ waitMs: 60_000 });
    const started = performance.now();
    await assert.rejects(drive(step, settings(), {}, adaptersFor(settings()), AbortSignal.timeout(1_500)), /ciliuml2announcementpolicies\.cilium\.io.*cancelled/);
    assert.ok(performance.now() - started < 5_000);
  });

  it('Cilium before 1.18 (pool served only as v2alpha1): discovery picks v2alpha1 and the pool is applied there', async () => {
    const CRD_PATH = '/apis/apiextensions.k8s.io/v1/customresourcedefinitions';
    const crd = parseYaml(readFileSync(join(sharedCrdsDir, 'cilium', 'ciliumloadbalancerippools.cilium.io.yaml'), 'utf8')) as any;
    crd.spec.versions = crd.spec.versions
      .filter((v: any) => v.name === 'v2alpha1')
      .map(({ deprecated: _d, deprecationWarning: _w, ...v }: any) => ({ ...v, served: true, storage: true }));
    try {
      await kubeJson(cp.rig, 'PATCH', `${CRD_PATH}/${crd.metadata.name}?fieldManager=hb-test&force=true`, { body: JSON.stringify(crd), contentType: 'application/apply-patch+yaml' });
      await installCrds(cp, join(sharedCrdsDir, 'cilium', 'ciliuml2announcementpolicies.cilium.io.yaml'));
      const crds = await drive(makeCiliumCrdsStep({ waitMs: 30_000 }), settings(), {});
      assert.deepEqual(crds.outputs, { poolApiVersion: 'cilium.io/v2alpha1', l2PolicyApiVersion: 'cilium.io/v2alpha1' });
      const l2 = await drive(ciliumL2Step, settings(), crds.outputs);
      assert.deepEqual(summary(l2.changes), ['create CiliumLoadBalancerIPPool homelab', 'create CiliumL2AnnouncementPolicy homelab']);
      const pool = (await kubeJson<any>(cp.rig, 'GET', '/apis/cilium.io/v2alpha1/ciliumloadbalancerippools/homelab')).json;
      assert.deepEqual(pool.spec.blocks, [{ start: '192.168.0.240', stop: '192.168.0.250' }]);
    } finally {
      // Back to an empty apiserver for the cold bootstrap: the CRDs take their objects with them.
      for (const name of CILIUM_CRDS) await kubeJson(cp.rig, 'DELETE', `${CRD_PATH}/${name}`, { allow: [404] });
      const deadline = Date.now() + 30_000;
      for (const name of CILIUM_CRDS) {
        while ((await kubeJson(cp.rig, 'GET', `${CRD_PATH}/${name}`, { allow: [404] })).status !== 404) {
          assert.ok(Date.now() < deadline, `CRD ${name} was not deleted`);
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    }
  });

  let coldCounts: RequestCounts;
  it('cold bootstrap on an empty apiserver converges; the Cilium CRDs appear 5 s after start', async (t) => {
    const mark = await auditMark(cp);
    const operator = playCiliumOperator(cp, 5_000);
    // Plays the argocd step's chart bringing the Argo CD CRDs, also a while after the start.
    const argocdCrds = new Promise((r) => setTimeout(r, 5_000)).then(() => installCrds(cp, join(sharedCrdsDir, 'argocd')));
    const started = performance.now();
    const runs = await driveAll(settings());
    const ms = performance.now() - started;
    await operator.done;
    await argocdCrds;
    coldCounts = await countRequests(cp, { since: mark });

    assert.ok(ms >= 5_000, 'cilium-crds waited for the operator');
    assert.deepEqual(summary(runs['preflight']!.changes), []);
    assert.deepEqual(runs['preflight']!.outputs, { ageRecipients: [key.recipient] });
    assert.deepEqual(summary(runs['cilium-crds']!.changes), CILIUM_CRDS.map((n) => `wait CRD ${n}`));
    assert.ok(runs['cilium-crds']!.progress.some((p) => /waiting for CRDs .*ciliumloadbalancerippools/.test(p)), 'progress says what it waits for');
    assert.deepEqual(runs['cilium-crds']!.outputs, { poolApiVersion: 'cilium.io/v2', l2PolicyApiVersion: 'cilium.io/v2alpha1' });
    assert.deepEqual(summary(runs['cilium-l2']!.changes), ['create CiliumLoadBalancerIPPool homelab', 'create CiliumL2AnnouncementPolicy homelab']);
    assert.deepEqual(summary(runs['age-key']!.changes), ['create Namespace argocd', 'create Secret argocd/sops-age-key']);
    assert.deepEqual(summary(runs['root-appset']!.changes), ['wait CRD applicationsets.argoproj.io', 'create ApplicationSet argocd/homelab']);

    // Exactly one server-side apply per object, and every request says who made it.
    assert.equal(coldCounts.writes, 5, describeCounts(coldCounts));
    assert.deepEqual(
      Object.entries(coldCounts.byResource).filter(([k]) => /^(patch|create|update|delete) /.test(k)).sort(),
      [['patch applicationsets', 1], ['patch ciliuml2announcementpolicies', 1], ['patch ciliumloadbalancerippools', 1], ['patch namespaces', 1], ['patch secrets', 1]],
    );
    assert.ok(coldCounts.events.every((e) => e.userAgent?.startsWith('homelab-bootstrap/')), 'user agent homelab-bootstrap/<version>');
    // A watch, not a poll: the CRDs were read once each (have), then watched until Established.
    assert.equal(coldCounts.byResource['get customresourcedefinitions'], 2, describeCounts(coldCounts));
    assert.ok((coldCounts.byResource['watch customresourcedefinitions'] ?? 0) >= 3, 'both Cilium CRDs and the ApplicationSet CRD were watched');
    t.diagnostic(`cold run: ${describeCounts(coldCounts)}`);
  });

  it('the pool and policy were accepted by the real Cilium CRD schemas, as desired; a misspelled field is refused', async () => {
    const pool = (await kubeJson<any>(cp.rig, 'GET', '/apis/cilium.io/v2/ciliumloadbalancerippools/homelab')).json;
    assert.deepEqual(pool.spec.blocks, [{ start: '192.168.0.240', stop: '192.168.0.250' }]);
    assert.equal(pool.metadata.labels['app.kubernetes.io/managed-by'], 'homelab-bootstrap');
    const policy = (await kubeJson<any>(cp.rig, 'GET', '/apis/cilium.io/v2alpha1/ciliuml2announcementpolicies/homelab')).json;
    assert.equal(policy.spec.loadBalancerIPs, true);
    assert.deepEqual(policy.spec.interfaces, ['^eth0$']);
    assert.ok(policy.metadata.managedFields.some((m: any) => m.manager === 'homelab-bootstrap' && m.operation === 'Apply'), 'one field manager, server-side apply');

    // The schema check is real: server-side apply refuses a field the CRD schema lacks (HTTP 500
    // "field not declared in schema"), which the adapter reports as permanent, not transient.
    const { adapters } = adaptersFor(settings());
    try {
      await assert.rejects(
        adapters.kube.apply({ apiVersion: 'cilium.io/v2alpha1', kind: 'CiliumL2AnnouncementPolicy', metadata: { name: 'typo' }, spec: { loadBalancerIps: true } }, { dryRun: true }),
        (e: Error) => e instanceof KubeApiError && /loadBalancerIps/.test(e.message) && /CiliumL2AnnouncementPolicy typo/.test(e.message),
      );
    } finally {
      adapters.kube.close();
    }
  });

  it('the root ApplicationSet was accepted by the real ApplicationSet CRD, as desired', async () => {
    const a = (await kubeJson<any>(cp.rig, 'GET', '/apis/argoproj.io/v1alpha1/namespaces/argocd/applicationsets/homelab')).json;
    assert.deepEqual(a.spec.goTemplateOptions, ['missingkey=error']);
    assert.deepEqual(a.spec.syncPolicy, { preserveResourcesOnDeletion: true });
    assert.deepEqual(a.spec.generators[0].git.directories.map((d: any) => d.path), ['k8s/argocd-homelab/infra/*', 'k8s/argocd-homelab/apps/*', 'k8s/argocd-homelab/media/*']);
    assert.deepEqual(a.spec.template.spec.syncPolicy.syncOptions, ['CreateNamespace=true', 'ServerSideApply=true']);
  });

  it('the age Secret holds the key file, byte for byte, labelled as owned', async () => {
    const s = (await kubeJson<any>(cp.rig, 'GET', '/api/v1/namespaces/argocd/secrets/sops-age-key')).json;
    assert.equal(Buffer.from(s.data['keys.txt'], 'base64').toString('utf8'), key.text);
    assert.deepEqual(Object.keys(s.data), ['keys.txt']);
    assert.equal(s.metadata.labels['app.kubernetes.io/managed-by'], 'homelab-bootstrap');
  });

  it('a second run makes zero write requests', async (t) => {
    const mark = await auditMark(cp);
    const runs = await driveAll(settings());
    const counts = await countRequests(cp, { since: mark });
    for (const [name, r] of Object.entries(runs)) assert.deepEqual(writesOf(r.changes), [], `${name} wants to write: ${JSON.stringify(r.changes)}`);
    assert.equal(counts.writes, 0, describeCounts(counts));
    assert.deepEqual(runs['cilium-crds']!.outputs, { poolApiVersion: 'cilium.io/v2', l2PolicyApiVersion: 'cilium.io/v2alpha1' });
    t.diagnostic(`no-op run: ${describeCounts(counts)}`);
  });

  it('changing the pool stop changes exactly the pool, and only its stop', async () => {
    const mark = await auditMark(cp);
    const runs = await driveAll(settingsFor(cp.kubeconfigPath, keyFile, '192.168.0.245'));
    const counts = await countRequests(cp, { since: mark });
    const writes = Object.values(runs).flatMap((r) => writesOf(r.changes));
    assert.deepEqual(summary(writes), ['update CiliumLoadBalancerIPPool homelab']);
    assert.deepEqual(writes[0]!.diff, [{ path: '$.spec.blocks[0].stop', from: '192.168.0.250', to: '192.168.0.245' }]);
    assert.equal(counts.writes, 1, describeCounts(counts));
    assert.equal(counts.byResource['patch ciliumloadbalancerippools'], 1);
    const pool = (await kubeJson<any>(cp.rig, 'GET', '/apis/cilium.io/v2/ciliumloadbalancerippools/homelab')).json;
    assert.equal(pool.spec.blocks[0].stop, '192.168.0.245');
  });

  it('prunes the pools and policies the daemon labelled and settings no longer name; never others', async () => {
    const create = (path: string, name: string, labels: Record<string, string>, spec: object) =>
      kubeJson(cp.rig, 'POST', path, { body: { apiVersion: path.includes('v2alpha1') ? 'cilium.io/v2alpha1' : 'cilium.io/v2', kind: path.includes('l2') ? 'CiliumL2AnnouncementPolicy' : 'CiliumLoadBalancerIPPool', metadata: { name, labels }, spec } });
    await create('/apis/cilium.io/v2/ciliumloadbalancerippools', 'old-pool', { ...OWNER_LABEL }, { blocks: [{ cidr: '10.9.0.0/24' }] });
    await create('/apis/cilium.io/v2/ciliumloadbalancerippools', 'someone-elses', {}, { blocks: [{ cidr: '10.8.0.0/24' }] });
    await create('/apis/cilium.io/v2alpha1/ciliuml2announcementpolicies', 'old-policy', { ...OWNER_LABEL }, { loadBalancerIPs: true });
    const mark = await auditMark(cp);
    const s = settingsFor(cp.kubeconfigPath, keyFile, '192.168.0.245');
    const run = await drive(ciliumL2Step, s, { poolApiVersion: 'cilium.io/v2', l2PolicyApiVersion: 'cilium.io/v2alpha1' });
    const counts = await countRequests(cp, { since: mark });
    assert.deepEqual(summary(writesOf(run.changes)), ['delete CiliumLoadBalancerIPPool old-pool', 'delete CiliumL2AnnouncementPolicy old-policy']);
    assert.equal(counts.writes, 2, describeCounts(counts));
    const pools = (await kubeJson<any>(cp.rig, 'GET', '/apis/cilium.io/v2/ciliumloadbalancerippools')).json.items.map((p: any) => p.metadata.name).sort();
    assert.deepEqual(pools, ['homelab', 'someone-elses']);
  });

  it('age key: a rotated key file updates the Secret on the next run (one write, no key in the Change)', async () => {
    const rotated = ageKeygen();
    keys.push(rotated.text);
    writeFileSync(keyFile, rotated.text, { mode: 0o600 });
    try {
      const mark = await auditMark(cp);
      const run = await drive(ageKeyStep, settings(), {});
      const counts = await countRequests(cp, { since: mark });
      assert.deepEqual(summary(run.changes), ['update Secret argocd/sops-age-key']);
      assert.deepEqual(run.changes[0]!.diff, [{ path: "$.data['keys.txt']", from: '[redacted]', to: '[redacted]' }]);
      assertNoKeyBytes(JSON.stringify(run.changes), rotated.text, 'the Change');
      assertNoKeyBytes(JSON.stringify(run.changes), key.text, 'the Change');
      assert.equal(counts.writes, 1, describeCounts(counts));
      const s = (await kubeJson<any>(cp.rig, 'GET', '/api/v1/namespaces/argocd/secrets/sops-age-key')).json;
      assert.equal(Buffer.from(s.data['keys.txt'], 'base64').toString('utf8'), rotated.text);
      // ...and the run after that is a no-op again.
      assert.deepEqual(summary((await drive(ageKeyStep, settings(), {})).changes), ['noop Secret argocd/sops-age-key']);
    } finally {
      writeFileSync(keyFile, key.text, { mode: 0o600 });
    }
  });

  it("age key: a Secret the plan's kubectl unit made (another field manager, old key) is taken over", async () => {
    const path = '/api/v1/namespaces/argocd/secrets';
    await kubeJson(cp.rig, 'DELETE', `${path}/sops-age-key`);
    const old = ageKeygen();
    keys.push(old.text);
    await kubeJson(cp.rig, 'POST', `${path}?fieldManager=kubectl-client-side-apply`, {
      body: { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'sops-age-key' }, data: { 'keys.txt': Buffer.from(old.text).toString('base64') } },
    });
    const mark = await auditMark(cp);
    const run = await drive(ageKeyStep, settings(), {});
    const counts = await countRequests(cp, { since: mark });
    assert.deepEqual(summary(run.changes), ['update Secret argocd/sops-age-key']);
    assert.equal(counts.writes, 1, describeCounts(counts));
    const s = (await kubeJson<any>(cp.rig, 'GET', `${path}/sops-age-key`)).json;
    assert.equal(Buffer.from(s.data['keys.txt'], 'base64').toString('utf8'), key.text);
    assert.equal(s.metadata.labels['app.kubernetes.io/managed-by'], 'homelab-bootstrap');
    assert.deepEqual(summary((await drive(ageKeyStep, settings(), {})).changes), ['noop Secret argocd/sops-age-key']);
  });

  describe('age key file problems: a clear error naming the path, and no byte of the key', () => {
    const cases: [string, (p: string) => void, RegExp][] = [
      ['missing', () => {}, /does not exist/],
      ['empty', (p) => writeFileSync(p, '', { mode: 0o600 }), /is empty/],
      ['malformed (a typo in the identity)', (p) => writeFileSync(p, key.text.replace(/(AGE-SECRET-KEY-1.{10})(.)/, (_m, a: string, c: string) => a + (c === 'Q' ? 'P' : 'Q')), { mode: 0o600 }), /line 3 .*checksum/],
      ['malformed (not an age key at all)', (p) => writeFileSync(p, 'password=hunter2hunter2\n', { mode: 0o600 }), /line 1 is not an age X25519 identity/],
      ['a directory', (p) => mkdirSync(p), /is a directory/],
    ];
    for (const [what, make, re] of cases) {
      it(what, async () => {
        const p = join(dir, `bad-${what.replace(/\W+/g, '-')}`, 'keys.txt');
        mkdirSync(join(p, '..'), { recursive: true });
        make(p);
        const s = settingsFor(cp.kubeconfigPath, p);
        for (const step of [preflightStep, ageKeyStep] as Step[]) {
          await assert.rejects(drive(step, s, {}), (e: Error) => {
            assert.match(e.message, re, `${step.name}: ${e.message}`);
            assert.ok(e.message.includes(p), `${step.name}: the error names the path: ${e.message}`);
            assert.ok(e.message.includes('$.sops.ageKeyFile'), `${step.name}: and the settings field`);
            assertNoKeyBytes(e.message, key.text, 'the error');
            assert.doesNotMatch(e.message, /hunter2/);
            return true;
          });
        }
      });
    }
  });

  it('a group- or world-readable key file logs a warning naming the path; 0600 does not', async () => {
    for (const [mode, warns] of [[0o644, true], [0o640, true], [0o600, false]] as const) {
      chmodSync(keyFile, mode);
      const from = logLines.length;
      await drive(preflightStep, settings(), {});
      const warnings = logsSince(from).filter((l) => l.level === 'warn' && l.credential === 'age-key');
      assert.equal(warnings.length, warns ? 1 : 0, `mode ${mode.toString(8)}: ${JSON.stringify(warnings)}`);
      if (warns) {
        assert.ok(warnings[0]!.msg.includes(keyFile), warnings[0]!.msg);
        assert.match(warnings[0]!.msg, new RegExp(`mode 0${mode.toString(8)}`));
      }
    }
    chmodSync(keyFile, 0o600);
  });

  describe('preflight waits for /readyz while the API server is starting', () => {
    /** A kubeconfig whose server is a local port that forwards to the apiserver once opened. */
    function delayedProxy(delayMs: number | null): { kubeconfig: string; close(): Promise<void> } {
      const target = new URL(cp.server);
      const sockets = new Set<Socket>();
      let server: Server | undefined;
      // Below Linux's ephemeral range (32768+), where the OS puts both outgoing connections and
      // the rig's listen(0) ports: nothing else takes a port here while the test waits.
      const port = 20_000 + Math.floor(Math.random() * 12_000);
      const kubeconfig = join(dir, `kubeconfig-proxy-${port}`);
      writeFileSync(kubeconfig, readFileSync(cp.kubeconfigPath, 'utf8').replace(cp.server, `https://127.0.0.1:${port}`), { mode: 0o600 });
      const timer =
        delayMs === null
          ? undefined
          : setTimeout(() => {
              server = createServer((c) => {
                const up = connect(Number(target.port), target.hostname);
                for (const s of [c, up]) {
                  sockets.add(s);
                  s.on('error', () => s.destroy());
                  s.on('close', () => sockets.delete(s));
                }
                c.pipe(up).pipe(c);
              }).listen(port, '127.0.0.1');
            }, delayMs);
      return {
        kubeconfig,
        close: async () => {
          clearTimeout(timer);
          for (const s of sockets) s.destroy();
          await new Promise((r) => (server ? server.close(r) : r(undefined)));
        },
      };
    }

    it('retries with a log line per try until /readyz answers', async () => {
      const proxy = delayedProxy(1_500);
      try {
        const from = logLines.length;
        const step = makePreflightStep({ readyzWaitMs: 20_000, readyzDelayMs: 200, readyzMaxDelayMs: 400 });
        const run = await drive(step, settingsFor(proxy.kubeconfig, keyFile), {});
        const tries = logsSince(from).filter((l) => /waiting for the API server \/readyz/.test(l.msg));
        assert.ok(tries.length >= 2, `a log line per try: ${tries.length}`);
        assert.ok(tries.every((l) => /connection refused/.test(l.msg)), 'says why it waits');
        assert.ok(run.progress.includes('waiting for the API server /readyz'));
        assert.ok(logsSince(from).some((l) => l.msg === 'API server is ready'));
      } finally {
        await proxy.close();
      }
    });

    it('gives up after its bound with a clear error', async () => {
      const proxy = delayedProxy(null);
      try {
        const step = makePreflightStep({ readyzWaitMs: 1_500, readyzDelayMs: 200, readyzMaxDelayMs: 400 });
        const started = performance.now();
        await assert.rejects(drive(step, settingsFor(proxy.kubeconfig, keyFile), {}), /API server https:\/\/127\.0\.0\.1:\d+ not ready after 2 s \(\d+ tries; last: connection refused\)/);
        assert.ok(performance.now() - started < 5_000);
      } finally {
        await proxy.close();
      }
    });
  });

  describe('KubeClient against the real apiserver', () => {
    let kube: KubeClient;
    before(() => {
      kube = new KubeClient(cp.kubeconfigPath, log);
    });
    after(() => kube.close());

    it('get of a missing object is undefined; list and get of a kind nobody serves are empty', async () => {
      assert.equal(await kube.get('v1', 'ConfigMap', 'nope', 'default'), undefined);
      assert.equal(await kube.get('nothing.example/v1', 'Widget', 'w'), undefined);
      assert.deepEqual(await kube.list('nothing.example/v1', 'Widget'), []);
      assert.equal(await kube.servedVersion('nothing.example', 'widgets'), undefined);
      assert.equal(await kube.serves('nothing.example/v1', 'Widget'), false);
    });

    it('a refused object is a KubeApiError with the apiserver message and the object, not retried', async () => {
      await assert.rejects(kube.apply({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'Bad_Name', namespace: 'default' } }), (e: Error) => {
        assert.ok(e instanceof KubeApiError, String(e));
        assert.equal(e.httpStatus, 422);
        assert.match(e.message, /apply v1 ConfigMap default\/Bad_Name: HTTP 422 Invalid: .*Bad_Name/);
        assert.equal(isTransient(e), false);
        return true;
      });
      await assert.rejects(kube.apply({ apiVersion: 'nothing.example/v1', kind: 'Widget', metadata: { name: 'w' } }), /does not serve nothing\.example\/v1 Widget/);
    });

    it('connection refused is a TransientError (the engine retries it)', async () => {
      const path = join(dir, 'kubeconfig-refused');
      writeFileSync(path, readFileSync(cp.kubeconfigPath, 'utf8').replace(cp.server, 'https://127.0.0.1:1'), { mode: 0o600 });
      const k = new KubeClient(path, log);
      try {
        await assert.rejects(k.get('v1', 'Namespace', 'default'), (e: Error) => e instanceof TransientError && /cannot reach the API server at https:\/\/127\.0\.0\.1:1 \(ECONNREFUSED\)/.test(e.message));
        assert.deepEqual(await k.readyzStatus(), { ready: false, detail: 'connection refused' });
      } finally {
        k.close();
      }
    });

    it('a kubeconfig that does not parse names the file and quotes none of it', async () => {
      const path = join(dir, 'kubeconfig-broken');
      writeFileSync(path, 'users:\n- name: x\n  user: {token: s3cr3t-t0ken-value\n', { mode: 0o600 });
      const k = new KubeClient(path, log);
      await assert.rejects(k.readyz(), (e: Error) => e.message.includes(path) && !e.message.includes('s3cr3t'));
    });

    it('ensureNamespace creates once, labelled as owned', async () => {
      assert.equal(await kube.ensureNamespace('hb-ensure'), true);
      assert.equal(await kube.ensureNamespace('hb-ensure'), false);
      const ns = await kube.get('v1', 'Namespace', 'hb-ensure');
      assert.equal(ns?.metadata.labels?.['app.kubernetes.io/managed-by'], 'homelab-bootstrap');
    });
  });

  it('no log line of the whole suite holds a byte of any key', () => {
    const all = logLines.join('\n');
    for (const k of keys) assertNoKeyBytes(all, k, 'the log');
    assert.ok(all.length > 0);
  });
});

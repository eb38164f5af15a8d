import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseSettings } from '../../src/settings/load.ts';
import { desiredL2, l2ApiVersions, L2_POLICY_NAME, POOL_NAME } from '../../src/desired/l2.ts';
import { ciliumL2Step } from '../../src/steps/cilium-l2.ts';
import { ciliumCrdsStep, discoverL2Versions } from '../../src/steps/cilium-crds.ts';
import { OWNER_LABEL, FIELD_MANAGER } from '../../src/adapters/kube.ts';
import { RENDER_UPSTREAM, type KubeObject } from '../../src/steps/types.ts';

const settings = (over: Record<string, unknown> = {}) =>
  parseSettings({
    domain: 'example.org',
    network: { lbPool: { start: '192.168.0.240', stop: '192.168.0.250' }, ingressIP: '192.168.0.240', interfaces: ['^enp3s0$'], ...over },
    gitops: { repoURL: 'https://github.com/example/homelab.git' },
  });

const spec = (o: KubeObject) => o.spec as Record<string, unknown>;

test('the pool has one block from network.lbPool (start/stop, not a CIDR)', () => {
  const { pool } = desiredL2(settings(), l2ApiVersions({}));
  assert.equal(pool.kind, 'CiliumLoadBalancerIPPool');
  assert.equal(pool.metadata.name, POOL_NAME);
  assert.deepEqual(spec(pool).blocks, [{ start: '192.168.0.240', stop: '192.168.0.250' }]);
});

test('the L2 policy announces LoadBalancer IPs on the configured interfaces, on every node', () => {
  const { policy } = desiredL2(settings(), l2ApiVersions({}));
  assert.equal(policy.kind, 'CiliumL2AnnouncementPolicy');
  assert.equal(policy.metadata.name, L2_POLICY_NAME);
  assert.equal(spec(policy).loadBalancerIPs, true);
  assert.deepEqual(spec(policy).interfaces, ['^enp3s0$']);
  // Cilium's docs example excludes control-plane nodes; on single-node k3s that announces nothing.
  assert.equal(spec(policy).nodeSelector, undefined);
});

test('the default interfaces cover eth* and en* NICs', () => {
  const s = parseSettings({ domain: 'example.org', network: { lbPool: { start: '10.0.0.1', stop: '10.0.0.9' }, ingressIP: '10.0.0.1' }, gitops: { repoURL: 'x' } });
  assert.deepEqual(spec(desiredL2(s, l2ApiVersions({})).policy).interfaces, ['^eth[0-9]+', '^en.+']);
});

test('both objects carry the owner label (what pruning keys on)', () => {
  const { pool, policy } = desiredL2(settings(), l2ApiVersions({}));
  for (const o of [pool, policy]) assert.deepEqual(o.metadata.labels, { ...OWNER_LABEL });
});

test('render (no discovery) uses pool cilium.io/v2 and policy cilium.io/v2alpha1', () => {
  const r = ciliumL2Step.rendered(ciliumL2Step.want(settings(), RENDER_UPSTREAM));
  assert.deepEqual(r.objects?.map((o) => `${o.apiVersion} ${o.kind}`), ['cilium.io/v2 CiliumLoadBalancerIPPool', 'cilium.io/v2alpha1 CiliumL2AnnouncementPolicy']);
});

test('the versions cilium-crds discovered are used (Cilium < 1.18 serves the pool only as v2alpha1)', () => {
  const w = ciliumL2Step.want(settings(), { poolApiVersion: 'cilium.io/v2alpha1', l2PolicyApiVersion: 'cilium.io/v2alpha1' });
  assert.equal(w.pool.apiVersion, 'cilium.io/v2alpha1');
  assert.equal(w.policy.apiVersion, 'cilium.io/v2alpha1');
});

const onServer = (o: KubeObject, extraSpec: Record<string, unknown> = {}): KubeObject => ({
  ...structuredClone(o),
  metadata: { ...structuredClone(o.metadata), uid: 'x', managedFields: [{ manager: FIELD_MANAGER, operation: 'Apply', fieldsV1: { 'f:metadata': { 'f:labels': { 'f:app.kubernetes.io/managed-by': {} } }, 'f:spec': Object.fromEntries(Object.keys(spec(o)).map((k) => [`f:${k}`, {}])) } }] },
  spec: { ...spec(o), ...extraSpec },
});

test('changes: nothing to do when the server holds the desired objects (plus its defaults)', () => {
  const w = ciliumL2Step.want(settings(), {});
  const c = ciliumL2Step.changes(w, { pool: onServer(w.pool, { disabled: false }), policy: onServer(w.policy), stalePools: [], stalePolicies: [] });
  assert.deepEqual(c.map((x) => x.action), ['noop', 'noop']);
});

test('changes: a new pool stop updates exactly the pool, with the field diff', () => {
  const before = ciliumL2Step.want(settings(), {});
  const after = ciliumL2Step.want(settings({ lbPool: { start: '192.168.0.240', stop: '192.168.0.245' } }), {});
  const c = ciliumL2Step.changes(after, { pool: onServer(before.pool), policy: onServer(before.policy), stalePools: [], stalePolicies: [] });
  assert.deepEqual(c.map((x) => `${x.action} ${x.target}`), ['update CiliumLoadBalancerIPPool homelab', 'noop CiliumL2AnnouncementPolicy homelab']);
  assert.deepEqual(c[0]!.diff, [{ path: '$.spec.blocks[0].stop', from: '192.168.0.250', to: '192.168.0.245' }]);
});

test('changes: missing objects are created, stale owned ones deleted', () => {
  const w = ciliumL2Step.want(settings(), {});
  const c = ciliumL2Step.changes(w, { pool: undefined, policy: undefined, stalePools: ['old-pool'], stalePolicies: ['old-policy'] });
  assert.deepEqual(c.map((x) => `${x.action} ${x.target}`), [
    'create CiliumLoadBalancerIPPool homelab',
    'create CiliumL2AnnouncementPolicy homelab',
    'delete CiliumLoadBalancerIPPool old-pool',
    'delete CiliumL2AnnouncementPolicy old-policy',
  ]);
});

test('cilium-crds waits for both CRDs and outputs nothing until discovery answered', () => {
  const w = ciliumCrdsStep.want(settings(), {});
  assert.deepEqual(w.crds, ['ciliumloadbalancerippools.cilium.io', 'ciliuml2announcementpolicies.cilium.io']);
  const c = ciliumCrdsStep.changes(w, { state: { [w.crds[0]!]: 'Established', [w.crds[1]!]: 'not found' } });
  assert.deepEqual(c.map((x) => `${x.action} ${x.target}`), ['wait CRD ciliuml2announcementpolicies.cilium.io']);
  const done = { state: { [w.crds[0]!]: 'Established', [w.crds[1]!]: 'Established' }, versions: { poolApiVersion: 'cilium.io/v2', l2PolicyApiVersion: 'cilium.io/v2alpha1' } };
  assert.deepEqual(ciliumCrdsStep.changes(w, done), []);
  assert.deepEqual(ciliumCrdsStep.outputs!(w, done), done.versions);
  assert.deepEqual(ciliumCrdsStep.needs, ['cilium']);
  assert.deepEqual(ciliumL2Step.needs, ['cilium-crds']);
});

test('cilium-crds trusts discovery only once it serves exactly what each CRD declares (it trails CRD changes)', async () => {
  const crd = (name: string, versions: string[]): KubeObject => ({
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name },
    spec: { versions: versions.map((v) => ({ name: v, served: true })) },
  });
  const crds = new Map([
    ['ciliumloadbalancerippools.cilium.io', crd('ciliumloadbalancerippools.cilium.io', ['v2', 'v2alpha1'])],
    ['ciliuml2announcementpolicies.cilium.io', crd('ciliuml2announcementpolicies.cilium.io', ['v2alpha1'])],
  ]);
  const discovery = (pool: string[]) => ({
    servedVersions: async (_g: string, plurals: readonly string[]) => Object.fromEntries(plurals.map((p) => [p, p === 'ciliumloadbalancerippools' ? pool : ['cilium.io/v2alpha1']])),
  });
  // Right after Established (or an upgrade adding v2), discovery may still list only v2alpha1.
  assert.equal(await discoverL2Versions(discovery(['cilium.io/v2alpha1']), crds), undefined);
  assert.deepEqual(await discoverL2Versions(discovery(['cilium.io/v2', 'cilium.io/v2alpha1']), crds), { poolApiVersion: 'cilium.io/v2', l2PolicyApiVersion: 'cilium.io/v2alpha1' });
  // Cilium < 1.18: the CRD itself declares only v2alpha1.
  crds.set('ciliumloadbalancerippools.cilium.io', crd('ciliumloadbalancerippools.cilium.io', ['v2alpha1']));
  assert.deepEqual(await discoverL2Versions(discovery(['cilium.io/v2alpha1']), crds), { poolApiVersion: 'cilium.io/v2alpha1', l2PolicyApiVersion: 'cilium.io/v2alpha1' });
});

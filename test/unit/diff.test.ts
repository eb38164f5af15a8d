import { test } from 'node:test';
import assert from 'node:assert/strict';
import { diffObjects, formatDiff } from '../../src/diff.ts';
import { applyDiff, FIELD_MANAGER, OWNER_LABEL } from '../../src/adapters/kube.ts';
import type { KubeObject } from '../../src/steps/types.ts';

test('equal values give no diff', () => {
  assert.deepEqual(diffObjects({ a: 1, b: [1, { c: 'x' }] }, { a: 1, b: [1, { c: 'x' }] }), []);
});

test('changed, added and removed leaves carry JSON paths', () => {
  const d = diffObjects({ spec: { blocks: [{ start: 'a', stop: 'b' }] }, old: 1 }, { spec: { blocks: [{ start: 'a', stop: 'c' }], extra: true } });
  assert.deepEqual(d, [
    { path: '$.spec.blocks[0].stop', from: 'b', to: 'c' },
    { path: '$.spec.extra', to: true },
    { path: '$.old', from: 1 },
  ]);
});

test('keys that are not identifiers use bracket notation', () => {
  const d = diffObjects({ labels: {} }, { labels: { 'app.kubernetes.io/managed-by': 'x' } });
  assert.deepEqual(d, [{ path: "$.labels['app.kubernetes.io/managed-by']", to: 'x' }]);
});

test('lists of different length differ element by element', () => {
  assert.deepEqual(diffObjects({ l: ['a', 'b'] }, { l: ['a'] }), [{ path: '$.l[1]', from: 'b' }]);
  assert.deepEqual(diffObjects({ l: ['a'] }, { l: ['a', 'b'] }), [{ path: '$.l[1]', to: 'b' }]);
});

test('a type change is one diff of the whole value', () => {
  assert.deepEqual(diffObjects({ a: [1] }, { a: { x: 1 } }), [{ path: '$.a', from: [1], to: { x: 1 } }]);
});

test('onlyFieldsOfTo ignores what only `from` has (server defaults, other writers), also inside list items', () => {
  const have = { spec: { blocks: [{ start: 'a', stop: 'b', cidr: undefined, extra: 1 }], disabled: false }, status: { x: 1 } };
  assert.deepEqual(diffObjects(have, { spec: { blocks: [{ start: 'a', stop: 'b' }] } }, { onlyFieldsOfTo: true }), []);
  // ...but a list element that only `from` has is still a difference.
  assert.deepEqual(diffObjects({ l: [{ a: 1 }, { a: 2 }] }, { l: [{ a: 1 }] }, { onlyFieldsOfTo: true }), [{ path: '$.l[1]', from: { a: 2 } }]);
});

test('redact hides values but keeps the path', () => {
  const d = diffObjects({ data: { k: 'old' } }, { data: { k: 'new' } }, { redact: (p) => p.startsWith('$.data') });
  assert.deepEqual(d, [{ path: '$.data.k', from: '[redacted]', to: '[redacted]' }]);
  assert.doesNotMatch(JSON.stringify(d), /old|new/);
});

test('formatDiff renders one line per change', () => {
  assert.deepEqual(formatDiff([{ path: '$.a', from: 1, to: 2 }, { path: '$.b', to: 'x' }, { path: '$.c', from: true }]), ['$.a: 1 -> 2', '$.b: + "x"', '$.c: - true']);
});

// ---- applyDiff: a desired object against the server's copy (server-side apply semantics) ----

const want: KubeObject = {
  apiVersion: 'cilium.io/v2',
  kind: 'CiliumLoadBalancerIPPool',
  metadata: { name: 'homelab', labels: { ...OWNER_LABEL } },
  spec: { blocks: [{ start: '192.168.0.240', stop: '192.168.0.250' }] },
};

function serverCopy(spec: Record<string, unknown>, fieldsV1: Record<string, unknown>): KubeObject {
  return {
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumLoadBalancerIPPool',
    metadata: {
      name: 'homelab',
      uid: 'u',
      resourceVersion: '12',
      generation: 1,
      labels: { ...OWNER_LABEL, 'other/label': 'kept' },
      managedFields: [
        { manager: FIELD_MANAGER, operation: 'Apply', apiVersion: 'cilium.io/v2', fieldsType: 'FieldsV1', fieldsV1 },
        { manager: 'cilium-operator', operation: 'Update', subresource: 'status', fieldsV1: { 'f:status': {} } },
      ],
    },
    spec,
    status: { conditions: [] },
  };
}

const ownedNow = { 'f:metadata': { 'f:labels': { 'f:app.kubernetes.io/managed-by': {} } }, 'f:spec': { 'f:blocks': {} } };

test('applyDiff: server defaults, status and other writers are not differences', () => {
  assert.deepEqual(applyDiff(want, serverCopy({ blocks: [{ start: '192.168.0.240', stop: '192.168.0.250' }], disabled: false }, ownedNow)), []);
});

test('applyDiff: a changed value is exactly one field', () => {
  const have = serverCopy({ blocks: [{ start: '192.168.0.240', stop: '192.168.0.245' }], disabled: false }, ownedNow);
  assert.deepEqual(applyDiff(want, have), [{ path: '$.spec.blocks[0].stop', from: '192.168.0.245', to: '192.168.0.250' }]);
});

test('applyDiff: a field we applied before and no longer want is a removal (SSA would drop it)', () => {
  const owned = { ...ownedNow, 'f:spec': { 'f:blocks': {}, 'f:allowFirstLastIPs': {} } };
  const have = serverCopy({ blocks: [{ start: '192.168.0.240', stop: '192.168.0.250' }], allowFirstLastIPs: 'No' }, owned);
  assert.deepEqual(applyDiff(want, have), [{ path: '$.spec.allowFirstLastIPs', from: 'No' }]);
});

test('applyDiff: fields another manager applied are not ours to remove', () => {
  const have = serverCopy({ blocks: [{ start: '192.168.0.240', stop: '192.168.0.250' }], serviceSelector: { matchLabels: { a: 'b' } } }, ownedNow);
  (have.metadata.managedFields as object[]).push({ manager: 'kubectl', operation: 'Apply', fieldsV1: { 'f:spec': { 'f:serviceSelector': {} } } });
  assert.deepEqual(applyDiff(want, have), []);
});

test('applyDiff: an object that does not exist is all its fields, added', () => {
  const d = applyDiff(want, undefined);
  assert.deepEqual(d.map((x) => x.path), ['$.metadata', '$.spec']);
  assert.ok(d.every((x) => !('from' in x)));
});

test('applyDiff: redacted paths never show the value, old or new', () => {
  const secret: KubeObject = { apiVersion: 'v1', kind: 'Secret', metadata: { name: 's', namespace: 'n' }, type: 'Opaque', data: { 'keys.txt': 'TkVX' } };
  const have: KubeObject = { ...secret, data: { 'keys.txt': 'T0xE' } };
  const redact = (p: string) => p.startsWith('$.data');
  assert.deepEqual(applyDiff(secret, have, { redact }), [{ path: "$.data['keys.txt']", from: '[redacted]', to: '[redacted]' }]);
  const created = applyDiff(secret, undefined, { redact });
  assert.doesNotMatch(JSON.stringify(created), /TkVX/);
});

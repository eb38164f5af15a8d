// The pure parts of the Kubernetes adapter: how apiserver answers become errors the engine
// understands. (Requests themselves are tested against a real apiserver in test/integration.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { apiError, crdEstablished, describeTakeovers, KubeApiError, OWNER_SELECTOR, takeovers } from '../../src/adapters/kube.ts';
import { isTransient, retryAfterMs, TransientError } from '../../src/engine/errors.ts';

const status = (code: number, reason: string, message: string) => JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Failure', code, reason, message });

test('5xx and 429 are transient; Retry-After is kept for the engine', () => {
  const e503 = apiError(503, undefined, status(503, 'ServiceUnavailable', 'etcd leader changed'), 'get v1 Secret argocd/x');
  assert.ok(e503 instanceof TransientError && isTransient(e503));
  assert.match(e503.message, /get v1 Secret argocd\/x: HTTP 503 ServiceUnavailable: etcd leader changed/);
  const e429 = apiError(429, '7', status(429, 'TooManyRequests', 'slow down'), 'list x');
  assert.ok(isTransient(e429));
  assert.equal(retryAfterMs(e429), 7000);
});

test('4xx is a KubeApiError with the apiserver message and the object reference, not retried', () => {
  const e = apiError(422, undefined, status(422, 'Invalid', 'Namespace "Bad" is invalid: metadata.name: Invalid value'), 'apply v1 Namespace Bad');
  assert.ok(e instanceof KubeApiError);
  assert.equal(e.httpStatus, 422);
  assert.equal(e.reason, 'Invalid');
  assert.match(e.message, /^apply v1 Namespace Bad: HTTP 422 Invalid: Namespace "Bad" is invalid/);
  assert.equal(isTransient(e), false);
});

test('a 409 conflict of server-side apply is not retried (the engine would read a `status` 409 as transient)', () => {
  const e = apiError(409, undefined, status(409, 'Conflict', 'Apply failed with 1 conflict: conflict with "kubectl"'), 'apply x');
  assert.equal(isTransient(e), false);
});

test('the 500 server-side apply returns for a field the CRD schema lacks is permanent', () => {
  const e = apiError(500, undefined, status(500, 'InternalError', 'failed to create typed patch object (/t; cilium.io/v2alpha1, Kind=X): .spec.loadBalancerIps: field not declared in schema'), 'apply X t');
  assert.ok(e instanceof KubeApiError);
  assert.equal(isTransient(e), false);
  assert.match(e.message, /does not match the schema.*loadBalancerIps/);
});

test('a body that is not a Status is quoted as text', () => {
  assert.match(apiError(404, undefined, '404 page not found\n', 'get /x').message, /HTTP 404: 404 page not found$/);
});

test('a scrubber removes values from the message (Secret data)', () => {
  const e = apiError(422, undefined, status(422, 'Invalid', 'data: Invalid value: "c2VjcmV0"'), 'apply v1 Secret a/b', (s) => s.replace('c2VjcmV0', '[redacted]'));
  assert.doesNotMatch(e.message, /c2VjcmV0/);
});

test('crdEstablished reads the Established condition and says why not', () => {
  const crd = (conditions: object[]) => ({ apiVersion: 'apiextensions.k8s.io/v1', kind: 'CustomResourceDefinition', metadata: { name: 'x' }, status: { conditions } });
  assert.deepEqual(crdEstablished(undefined), { established: false, detail: 'not found' });
  assert.equal(crdEstablished(crd([{ type: 'Established', status: 'True' }])).established, true);
  assert.match(crdEstablished(crd([{ type: 'NamesAccepted', status: 'False', message: 'plural in use' }])).detail, /names not accepted: plural in use/);
  assert.match(crdEstablished(crd([{ type: 'Established', status: 'False', reason: 'Installing' }])).detail, /not Established \(Installing\)/);
});

test('the owner selector matches the owner label', () => {
  assert.equal(OWNER_SELECTOR, 'app.kubernetes.io/managed-by=homelab-bootstrap');
});

test('takeovers(): the fields a forced apply takes from another manager, as the plan and the log name them', () => {
  const want = { apiVersion: 'v1', kind: 'Secret', metadata: { name: 'tunnel-token', namespace: 'cloudflared', labels: { 'app.kubernetes.io/managed-by': 'homelab-bootstrap' } }, type: 'Opaque', data: { token: 'bmV3' } };
  const have = {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: {
      name: 'tunnel-token',
      namespace: 'cloudflared',
      managedFields: [
        { manager: 'kubectl-create', operation: 'Update', fieldsType: 'FieldsV1', fieldsV1: { 'f:data': { '.': {}, 'f:token': {} }, 'f:type': {} } },
        { manager: 'homelab-bootstrap', operation: 'Apply', fieldsType: 'FieldsV1', fieldsV1: { 'f:metadata': { 'f:labels': { 'f:app.kubernetes.io/managed-by': {} } } } },
      ],
    },
    type: 'Opaque',
    data: { token: 'b2xk' },
  };
  const taken = takeovers(want, have);
  // type is the same value (shared, no conflict); the token differs; our own entry is not a takeover.
  assert.deepEqual(taken, [{ manager: 'kubectl-create', operation: 'Update', paths: ['$.data.token'] }]);
  assert.equal(describeTakeovers(taken), 'overwrites the change of kubectl-create (Update) to $.data.token: the daemon owns this object');
  assert.deepEqual(takeovers(want, { ...have, data: { token: 'bmV3' } }), []);
  // A manager left owning only the presence of data (".") after a takeover is not a takeover again.
  const after = { ...have, metadata: { ...have.metadata, managedFields: [{ manager: 'kubectl-client-side-apply', operation: 'Update', fieldsType: 'FieldsV1', fieldsV1: { 'f:data': { '.': {} } } }] } };
  assert.deepEqual(takeovers(want, after), []);
  // ...nor one owning the map as a member ("f:data": {}), as the apiserver leaves it.
  assert.deepEqual(takeovers(want, { ...after, metadata: { ...after.metadata, managedFields: [{ ...after.metadata.managedFields[0]!, fieldsV1: { 'f:data': {} } }] } }), []);
  assert.deepEqual(takeovers(want, undefined), []);
});

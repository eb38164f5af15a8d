// What the tunnel step tells the operator besides changes, and the token check that spares a
// Cloudflare GET on a no-op.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { connectorNote, EXPECTED_CONNECTORS, otherTunnelNote, tokenIsFor } from '../../src/desired/tunnel.ts';
import { formatPlan, formatSummary } from '../../src/format.ts';
import type { StepReport } from '../../src/engine/run.ts';

const ACCOUNT = '0123456789abcdef0123456789abcdef';
const ID = 'f70ff985-a4ef-4643-bbbc-4a0ed4fc8415';
const token = (o: Record<string, unknown>) => Buffer.from(JSON.stringify(o)).toString('base64');

describe('tokenIsFor', () => {
  it("accepts cloudflared's token format for this account's tunnel only", () => {
    const s = Buffer.alloc(32, 3).toString('base64');
    assert.equal(tokenIsFor(token({ a: ACCOUNT, t: ID, s }), ACCOUNT, ID), true);
    assert.equal(tokenIsFor(`${token({ a: ACCOUNT, t: ID, s })}\n`, ACCOUNT, ID), true);
    assert.equal(tokenIsFor(token({ a: ACCOUNT, t: 'another-tunnel', s }), ACCOUNT, ID), false);
    assert.equal(tokenIsFor(token({ a: 'f'.repeat(32), t: ID, s }), ACCOUNT, ID), false);
    assert.equal(tokenIsFor(token({ a: ACCOUNT, t: ID, s: '' }), ACCOUNT, ID), false);
    assert.equal(tokenIsFor('stale', ACCOUNT, ID), false);
    assert.equal(tokenIsFor('', ACCOUNT, ID), false);
  });
});

describe('connector notes', () => {
  it('the expected count is the replicas of the shipped cloudflared Deployment', () => {
    const dep = parseYaml(readFileSync(new URL('../../manifests/argocd-homelab/infra/cloudflared/deployment.yaml', import.meta.url), 'utf8')) as { spec: { replicas: number } };
    assert.equal(EXPECTED_CONNECTORS, dep.spec.replicas);
  });

  it('none (never connected vs. stopped), as expected, too many', () => {
    const t = (connectors: number, status: string) => ({ id: ID, name: 'homelab', connectors, status });
    assert.match(connectorNote('homelab', t(0, 'inactive')), /^tunnel homelab \(f70ff985-.*\): 0 connectors: cloudflared has never connected/);
    assert.match(connectorNote('homelab', t(0, 'down')), /0 connectors: cloudflared is not running \(it was connected before\); check the pods in namespace cloudflared$/);
    assert.equal(connectorNote('homelab', t(1, 'degraded')), `tunnel homelab (${ID}): 1 connector, status degraded`);
    assert.equal(connectorNote('homelab', t(EXPECTED_CONNECTORS, 'healthy')), `tunnel homelab (${ID}): ${EXPECTED_CONNECTORS} connectors, status healthy`);
    assert.match(connectorNote('homelab', t(EXPECTED_CONNECTORS + 1, 'healthy')), /more than the \d the cloudflared Deployment runs: another cloudflared/);
  });

  it('another tunnel: its name, connectors, how to retire it, and that it is never deleted', () => {
    const n = otherTunnelNote({ id: ID, name: 'old-homelab', connectors: 1, status: 'healthy' }, 'homelab');
    assert.match(n, /^other tunnel old-homelab \(f70ff985-.*\) still has 1 connector \(status healthy\)/);
    assert.match(n, /`cloudflared tunnel cleanup old-homelab` then `cloudflared tunnel delete old-homelab`/);
    assert.match(n, /dashboard/);
    assert.match(n, /never deletes a tunnel it did not create/);
  });
});

describe('notes in plan and the apply summary', () => {
  const report = (over: Partial<StepReport>): StepReport => ({ step: 'tunnel', outcome: 'planned', changes: [{ action: 'noop', target: 'Cloudflare tunnel homelab' }], startedAt: '2026-01-01T00:00:00Z', durationMs: 10, attempts: 1, ...over });

  it('appear under their step, after its changes, also when nothing changes', () => {
    const plan = formatPlan([report({ notes: ['tunnel homelab (x): 2 connectors, status healthy', 'other tunnel old (y) still has 1 connector'] })]);
    assert.equal(plan, 'tunnel: no changes\n  i tunnel homelab (x): 2 connectors, status healthy\n  i other tunnel old (y) still has 1 connector\n\nPlan: 0 to create, 0 to update, 0 to delete, 0 conflict(s), 0 wait(s).\n');
    const summary = formatSummary([report({ outcome: 'unchanged', notes: ['tunnel homelab (x): 0 connectors'] })]);
    assert.match(summary, /^tunnel  unchanged .*\n  i tunnel homelab \(x\): 0 connectors\n/m);
  });
});

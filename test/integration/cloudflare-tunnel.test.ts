// The tunnel as the operator sees it: settings made elsewhere in its configuration survive,
// plan/apply/status tell how many cloudflared connectors it has, other tunnels that still
// serve traffic are reported (never deleted), a no-op costs 4 Cloudflare GETs (5 while cloudflared
// runs, once tunnel lists stop carrying the deprecated `connections` array), and the
// whole Cloudflare side (tunnel + dns, cold, no-op, faults) stays inside Cloudflare's schema.
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startControlPlane, type ControlPlane } from '../rig/control-plane.ts';
import { CloudflareEmulator } from '../rig/cloudflare-emulator.ts';
import { CF_ACCOUNT, CF_TOKEN, cfHarness, driveStep, stepContext, writesOf, type CfHarness } from '../rig/cloudflare-harness.ts';
import { tunnelStep } from '../../src/steps/tunnel.ts';
import { dnsStep } from '../../src/steps/dns.ts';
import type { Step } from '../../src/steps/types.ts';
import { runSteps, type Mode } from '../../src/engine/run.ts';
import { recordRun } from '../../src/engine/state.ts';
import { formatPlan } from '../../src/format.ts';
import { main } from '../../src/cli.ts';
import { EXPECTED_CONNECTORS } from '../../src/desired/tunnel.ts';

const ZONE = 'peterstorm.io';
const INGRESS_SERVICE = 'http://cilium-ingress.kube-system.svc.cluster.local:80';

let cp: ControlPlane;
let dir: string;
let emu: CloudflareEmulator;

before(async () => {
  cp = await startControlPlane();
  dir = mkdtempSync(join(tmpdir(), 'hb-cf-tunnel-'));
  writeFileSync(join(dir, 'cf-token'), `${CF_TOKEN}\n`, { mode: 0o600 });
});
after(async () => {
  await cp?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});
beforeEach(async () => {
  emu = await CloudflareEmulator.start({ token: CF_TOKEN, accountId: CF_ACCOUNT, zones: [ZONE] });
});
afterEach(async () => {
  try {
    // Fails the test on any request or answer outside Cloudflare's schema.
    await emu.stop();
  } finally {
    // The Secret belongs to the tunnel of one test.
    await cfHarness(cp, emu, dir).adapters.kube.delete('v1', 'Secret', 'tunnel-token', 'cloudflared');
  }
});

async function converge(h: CfHarness) {
  const tunnel = await driveStep(h, tunnelStep);
  const dns = await driveStep(h, dnsStep, tunnel.outputs);
  return { tunnel, dns };
}

function engine(h: CfHarness, mode: Mode) {
  return runSteps([tunnelStep as Step, dnsStep as Step], { mode, settings: h.settings, log: h.log, retry: { attempts: 4, baseMs: 10, maxMs: 50 }, context: (step, upstream, signal) => stepContext(h, step, upstream, signal) });
}


describe('tunnel configuration', () => {
  it('keeps the settings made elsewhere (warp-routing, originRequest) and changes only the ingress; no PUT once the ingress is right', async () => {
    const mine = emu.seedTunnel({
      name: 'homelab',
      config: {
        ingress: [{ hostname: `old.${ZONE}`, service: 'http://old:80', originRequest: {} }, { service: 'http_status:404', originRequest: {} }],
        'warp-routing': { enabled: true },
        originRequest: { connectTimeout: 30, noTLSVerify: false },
      },
    });
    const h = cfHarness(cp, emu, dir);
    const first = await converge(h);
    const cloudflare = writesOf(first.tunnel.changes).filter((c) => c.target.startsWith('Cloudflare'));
    assert.deepEqual(cloudflare.map((c) => `${c.action} ${c.target}`), ['update Cloudflare tunnel homelab ingress'], 'the tunnel made elsewhere is used as it is');
    const put = emu.requests.filter((r) => r.method === 'PUT');
    assert.equal(put.length, 1);
    assert.deepEqual(put[0]!.body, {
      config: {
        ingress: [{ hostname: `echo-server.${ZONE}`, service: INGRESS_SERVICE }, { service: 'http_status:404' }],
        'warp-routing': { enabled: true },
        originRequest: { connectTimeout: 30, noTLSVerify: false },
      },
    });
    const config = emu.tunnels.get(mine.id)!.config!;
    assert.deepEqual(config['warp-routing'], { enabled: true });
    assert.deepEqual(config.originRequest, { connectTimeout: 30, noTLSVerify: false });
    assert.deepEqual(config.ingress, [
      { hostname: `echo-server.${ZONE}`, service: INGRESS_SERVICE, originRequest: {} },
      { service: 'http_status:404', originRequest: {} },
    ]);

    emu.resetLog();
    const second = await converge(h);
    assert.deepEqual(writesOf([...second.tunnel.changes, ...second.dns.changes]), []);
    assert.deepEqual(emu.writes(), [], 'no PUT when the ingress already equals the wanted rules');
  });
});

describe('connectors', () => {
  it('plan, the log, apply and status say how many cloudflared run the tunnel: none, the expected number, too many', async () => {
    const h = cfHarness(cp, emu, dir);
    await converge(h);
    const id = emu.liveTunnels()[0]!.id;

    let plan = formatPlan(await engine(h, 'plan'));
    assert.match(plan, new RegExp(`^tunnel: no changes\\n  i tunnel homelab \\(${id}\\): 0 connectors: cloudflared has never connected`, 'm'));

    for (let i = 0; i < EXPECTED_CONNECTORS; i++) emu.connect(id);
    plan = formatPlan(await engine(h, 'plan'));
    assert.match(plan, new RegExp(`  i tunnel homelab \\(${id}\\): ${EXPECTED_CONNECTORS} connectors, status healthy\\n`));

    assert.ok(emu.requests.some((r) => r.path === `/accounts/${CF_ACCOUNT}/cfd_tunnel/${id}/connections`), 'the tunnel list carries no connections: they are counted from the connections endpoint');

    const extra = emu.connect(id);
    plan = formatPlan(await engine(h, 'plan'));
    assert.match(plan, new RegExp(`${EXPECTED_CONNECTORS + 1} connectors, more than the ${EXPECTED_CONNECTORS} the cloudflared Deployment runs: another cloudflared .*\`cloudflared tunnel info homelab\``));
    assert.ok(h.lines.some((l) => /"level":"warn"/.test(l) && l.includes(`${EXPECTED_CONNECTORS + 1} connectors, more than`)), 'a warning in the log');

    emu.disconnect(id, extra);
    emu.disconnect(id);
    const started = Date.now();
    const reports = await engine(h, 'apply');
    const stateDir = join(dir, 'state');
    recordRun(stateDir, 'apply', started, reports);
    let out = '';
    const code = await main(['status', '--state-dir', stateDir], { out: (t) => void (out += t), err: (t) => void (out += t) });
    assert.equal(code, 0);
    assert.match(out, new RegExp(`^tunnel .*\\n {13}i tunnel homelab \\(${id}\\): 0 connectors: cloudflared is not running \\(it was connected before\\)`, 'm'));
  });
});

describe('other tunnels of the account', () => {
  it('those with connectors are reported with their name, connector count and how to retire them; none is deleted', async () => {
    const old = emu.seedTunnel({ name: 'old-homelab', createdAt: '2023-05-01T00:00:00Z', remoteConfigOnly: true });
    emu.connect(old.id);
    emu.connect(old.id);
    const dormant = emu.seedTunnel({ name: 'dormant' });
    const h = cfHarness(cp, emu, dir);

    const planned = await engine(h, 'plan');
    const plan = formatPlan(planned);
    assert.match(plan, new RegExp(`  i other tunnel old-homelab \\(${old.id}\\) still has 2 connectors \\(status healthy\\): .*\`cloudflared tunnel cleanup old-homelab\` then \`cloudflared tunnel delete old-homelab\`.*never deletes a tunnel it did not create`));
    assert.ok(!plan.includes('dormant'), 'a tunnel without connectors is not worth a line');
    assert.ok(h.lines.some((l) => /"level":"warn"/.test(l) && l.includes('other tunnel old-homelab')), 'the log says it too');
    const asked = emu.requests.filter((r) => r.path.endsWith('/connections')).map((r) => r.path);
    assert.ok(asked.length > 0 && asked.every((p) => p === `/accounts/${CF_ACCOUNT}/cfd_tunnel/${old.id}/connections`), 'only the live tunnel is asked for its connectors, not the dormant one');

    const applied = await engine(h, 'apply');
    assert.deepEqual(applied.map((r) => r.outcome), ['changed', 'changed']);
    assert.ok(applied[0]!.notes!.some((n) => n.startsWith('other tunnel old-homelab')));
    assert.deepEqual(emu.liveTunnels().map((t) => t.name).sort(), ['dormant', 'homelab', 'old-homelab']);
    assert.ok(!emu.requests.some((r) => r.method === 'DELETE' || r.method === 'PATCH'), 'no tunnel deleted or changed');
    assert.equal(emu.tunnels.get(dormant.id)!.deleted_at, null);
  });
});

describe('a no-op', () => {
  const NOOP_GETS = ['/accounts/<id>/cfd_tunnel', '/accounts/<id>/cfd_tunnel/<id>/configurations', '/zones', '/zones/<id>/dns_records'];
  async function noop(h: CfHarness) {
    emu.resetLog();
    const run = await converge(h);
    assert.deepEqual(writesOf([...run.tunnel.changes, ...run.dns.changes]), []);
    return { notes: run.tunnel.notes, paths: emu.requests.map((r) => `${r.method} ${r.path.replace(/[0-9a-f]{32}|[0-9a-f-]{36}/g, '<id>')}`) };
  }

  it('costs 4 Cloudflare GETs on examples/homelab.json (the tunnel list, its configuration, the zone, the owned records), 5 while cloudflared runs and the list carries no connections', async () => {
    const h = cfHarness(cp, emu, dir);
    await converge(h);
    assert.deepEqual((await noop(h)).paths, NOOP_GETS.map((p) => `GET ${p}`), 'a tunnel that never connected: its status says 0 connectors');

    const id = emu.liveTunnels()[0]!.id;
    emu.connect(id);
    emu.connect(id);
    const run = await noop(h);
    assert.deepEqual(run.paths, [NOOP_GETS[0], '/accounts/<id>/cfd_tunnel/<id>/connections', ...NOOP_GETS.slice(1)].map((p) => `GET ${p}`));
    assert.match(run.notes[0]!, /: 2 connectors, status healthy$/);
  });

  it('costs 4 GETs while cloudflared runs when the tunnel list still fills its connections array (today\'s API)', async () => {
    await emu.stop();
    emu = await CloudflareEmulator.start({ token: CF_TOKEN, accountId: CF_ACCOUNT, zones: [ZONE], inlineConnections: true });
    const h = cfHarness(cp, emu, dir);
    await converge(h);
    const id = emu.liveTunnels()[0]!.id;
    emu.connect(id);
    emu.connect(id);
    const run = await noop(h);
    assert.deepEqual(run.paths, NOOP_GETS.map((p) => `GET ${p}`), 'no connections GET');
    assert.match(run.notes[0]!, /: 2 connectors, status healthy$/);
  });

  it('still asks for the token when the Secret names another tunnel, or the tunnel lost its connectors', async () => {
    const h = cfHarness(cp, emu, dir);
    await converge(h);
    const id = emu.liveTunnels()[0]!.id;
    const tokenGets = () => emu.requests.filter((r) => r.path.endsWith('/token')).length;

    // A Secret holding another tunnel's token: fetched, compared, rewritten.
    const other = emu.seedTunnel({ name: 'other' });
    await h.adapters.kube.apply({ apiVersion: 'v1', kind: 'Secret', metadata: { name: 'tunnel-token', namespace: 'cloudflared' }, type: 'Opaque', data: { token: Buffer.from(emu.tunnelToken(other.id)).toString('base64') } }, { force: true });
    emu.resetLog();
    let run = await driveStep(h, tunnelStep);
    assert.deepEqual(writesOf(run.changes).map((c) => `${c.action} ${c.target}`), ['update Secret cloudflared/tunnel-token']);
    assert.equal(tokenGets(), 1);
    const secret = await h.adapters.kube.get('v1', 'Secret', 'tunnel-token', 'cloudflared');
    assert.equal(Buffer.from((secret!.data as Record<string, string>).token!, 'base64').toString(), emu.tunnelToken(id));

    // Connected once, now down: the token is checked against Cloudflare's (it matches: no write).
    emu.connect(id);
    emu.disconnect(id);
    emu.resetLog();
    run = await driveStep(h, tunnelStep);
    assert.deepEqual(writesOf(run.changes), []);
    assert.equal(tokenGets(), 1);
  });
});

describe('the whole Cloudflare side inside the schema', () => {
  it('cold, no-op, then 429s, 5xx bursts and lost answers: converges, and no request or answer falls outside the schema', async () => {
    assert.ok(emu.validating, 'schema checks are on by default');
    const h = cfHarness(cp, emu, dir);
    const cold = await converge(h);
    assert.ok(writesOf([...cold.tunnel.changes, ...cold.dns.changes]).length >= 10);
    const noop = await converge(h);
    assert.deepEqual(writesOf([...noop.tunnel.changes, ...noop.dns.changes]), []);

    // Change what needs writing: a host goes, one comes, the dashboard edits the ingress.
    const h2 = cfHarness(cp, emu, dir, (s) => {
      s.hosts = s.hosts.filter((x: any) => x.name !== 'transmission');
      s.hosts.push({ name: 'jellyfin', access: 'external' });
    });
    const t = emu.liveTunnels()[0]!;
    emu.tunnels.get(t.id)!.config!.ingress[0]!.service = 'http://elsewhere:80';
    emu.rateLimit(2, { retryAfterSeconds: 1 });
    emu.serverErrors(2, { status: 502, match: { method: 'GET' } });
    emu.serverErrors(1, { status: 500, match: { method: 'PUT' } });
    emu.loseResponse({ match: { method: 'POST', path: /dns_records$/ } });
    emu.loseResponse({ match: { method: 'DELETE' } });
    const faulty = await converge(h2);
    assert.ok(faulty.tunnel.attempts + faulty.dns.attempts > 2, 'the faults were met and retried');
    assert.ok(emu.requests.some((r) => r.status === 429) && emu.requests.some((r) => r.status === 502) && emu.requests.some((r) => r.status === 'lost'));

    const after = await converge(h2);
    assert.deepEqual(writesOf([...after.tunnel.changes, ...after.dns.changes]), [], 'converged despite the faults');
    const names = emu.records(ZONE).map((r) => r.name);
    assert.ok(names.includes(`jellyfin.${ZONE}`) && !names.includes(`transmission.${ZONE}`));
    assert.equal(new Set(names).size, names.length, 'nothing created twice');
    assert.deepEqual(emu.violations, []);
  });
});

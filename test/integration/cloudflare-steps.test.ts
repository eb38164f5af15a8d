// The tunnel and dns steps against the Cloudflare emulator and a real kube-apiserver. Steps are
// driven the way the engine drives them (want, have, changes, change, retried on transient
// errors), or through the engine itself where independence from the cluster steps is the point.
import { after, before, beforeEach, afterEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startControlPlane, type ControlPlane } from '../rig/control-plane.ts';
import { auditMark, countRequests } from '../rig/audit.ts';
import { CloudflareEmulator, type Permission } from '../rig/cloudflare-emulator.ts';
import { CF_ACCOUNT as ACCOUNT, CF_TOKEN as TOKEN, cfHarness, driveStep, example, stepContext, writesOf, type CfHarness, type Driven } from '../rig/cloudflare-harness.ts';
import type { CloudflareClientOptions } from '../../src/adapters/cloudflare.ts';
import { OWNER_LABEL } from '../../src/adapters/kube.ts';
import type { KubeObject, Step } from '../../src/steps/types.ts';
import { tunnelStep, PartialStepError } from '../../src/steps/tunnel.ts';
import { dnsStep } from '../../src/steps/dns.ts';
import { ConflictError, isTransient, retryAfterMs } from '../../src/engine/errors.ts';
import { main, EXIT } from '../../src/cli.ts';
import { runSteps } from '../../src/engine/run.ts';

const ZONE = 'peterstorm.io';
const LEGACY = 'managed-by=homelab-bootstrap';
const MARKER = `${LEGACY} owner=homelab`;
const INGRESS_SERVICE = 'http://cilium-ingress.kube-system.svc.cluster.local:80';

let cp: ControlPlane;
let dir: string;
let emu: CloudflareEmulator;

/** SPEC.md's nine hosts: the example's Hubble UI host is not one of them. */
const spec9Hosts = (s: Record<string, any>) => void (s.hosts = s.hosts.filter((h: { name: string }) => h.name !== 'hubble'));

function harness(mutate: (s: Record<string, any>) => void = () => {}, cfOpts?: CloudflareClientOptions): CfHarness {
  return cfHarness(
    cp,
    emu,
    dir,
    (s) => {
      spec9Hosts(s);
      mutate(s);
    },
    cfOpts,
  );
}

/** tunnel, then dns with the tunnel's outputs. */
async function converge(h: CfHarness): Promise<{ tunnel: Driven; dns: Driven }> {
  const tunnel = await driveStep(h, tunnelStep);
  const dns = await driveStep(h, dnsStep, tunnel.outputs);
  return { tunnel, dns };
}

function zoneRecords() {
  return emu
    .records(ZONE)
    .map((r) => ({ type: r.type, name: r.name, content: r.content, proxied: r.proxied, ttl: r.ttl, comment: r.comment }))
    .sort((a, b) => a.name.localeCompare(b.name) || a.type.localeCompare(b.type));
}

function spec9(tunnelId: string) {
  const local = (name: string, ip = '192.168.0.240') => ({ type: 'A', name: `${name}.${ZONE}`, content: ip, proxied: false, ttl: 1, comment: MARKER });
  return [
    local('argocd'),
    { type: 'CNAME', name: `echo-server.${ZONE}`, content: `${tunnelId}.cfargotunnel.com`, proxied: true, ttl: 1, comment: MARKER },
    local('grafana'),
    local('overseerr'),
    local('plex', '192.168.0.241'),
    local('prowlarr'),
    local('radarr'),
    local('sonarr'),
    local('transmission'),
  ];
}

async function kubeGet(h: CfHarness, kind: string, name: string, ns?: string): Promise<KubeObject | undefined> {
  return h.adapters.kube.get('v1', kind, name, ns);
}

/** Everything the daemon may never print: the API token, the tunnel token, and its base64 form. */
function assertNoSecrets(text: string, tunnelToken?: string) {
  assert.ok(!text.includes(TOKEN), 'the API token leaked');
  if (tunnelToken) {
    assert.ok(!text.includes(tunnelToken), 'the tunnel token leaked');
    assert.ok(!text.includes(Buffer.from(tunnelToken).toString('base64')), 'the base64 tunnel token leaked');
  }
}

before(async () => {
  cp = await startControlPlane();
  dir = mkdtempSync(join(tmpdir(), 'hb-cf-'));
  writeFileSync(join(dir, 'cf-token'), `${TOKEN}\n`, { mode: 0o600 });
});
after(async () => {
  await cp?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});
beforeEach(async () => {
  emu = await CloudflareEmulator.start({ token: TOKEN, accountId: ACCOUNT, zones: [ZONE] });
});
afterEach(async () => {
  await emu.stop();
});

describe('cold run, then a run with nothing to do', () => {
  it("creates SPEC.md's nine records, one tunnel (external host, then catch-all) and the token Secret; the second run writes nothing", async (t) => {
    const h = harness();
    const mark = await auditMark(cp);
    const cold = await converge(h);
    const coldCalls = emu.countByMethod();
    t.diagnostic(`cold run: Cloudflare calls ${JSON.stringify(coldCalls)}`);

    const tunnels = emu.liveTunnels();
    assert.equal(tunnels.length, 1);
    const tunnel = tunnels[0]!;
    assert.equal(tunnel.name, 'homelab');
    assert.equal(tunnel.config_src, 'cloudflare');
    assert.deepEqual(tunnel.config?.ingress, [
      { hostname: `echo-server.${ZONE}`, service: INGRESS_SERVICE, originRequest: {} },
      { service: 'http_status:404', originRequest: {} },
    ]);
    assert.deepEqual(cold.tunnel.outputs, { tunnelId: tunnel.id });
    assert.deepEqual(zoneRecords(), spec9(tunnel.id));

    const token = emu.tunnelToken(tunnel.id);
    const secret = await kubeGet(h, 'Secret', 'tunnel-token', 'cloudflared');
    assert.equal(Buffer.from((secret?.data as Record<string, string>).token!, 'base64').toString('utf8'), token);
    assert.deepEqual(secret?.metadata.labels, { ...OWNER_LABEL });
    assert.equal(secret?.type, 'Opaque');
    assert.ok(await kubeGet(h, 'Namespace', 'cloudflared'));

    // Exactly the calls the design intends: tunnel list ×3 (have, before and after create), token,
    // zone, one list of the zone; one tunnel create, nine record creates, one ingress put.
    assert.deepEqual(coldCalls, { GET: 6, POST: 10, PUT: 1 });
    const coldKube = await countRequests(cp, { since: mark });
    assert.deepEqual(coldKube.byVerb.patch, 2, `kube writes: ${JSON.stringify(coldKube.byResource)}`);
    assert.equal(coldKube.writes, 2);

    // Second run.
    emu.resetLog();
    const mark2 = await auditMark(cp);
    const warm = await converge(h);
    t.diagnostic(`no-op run: Cloudflare calls ${JSON.stringify(emu.countByMethod())}`);
    assert.deepEqual(emu.writes(), [], 'no write calls to Cloudflare');
    // Tunnel list, configuration, zone, owned records: the token is not asked for while the Secret names this tunnel.
    assert.deepEqual(emu.countByMethod(), { GET: 4 });
    assert.deepEqual(writesOf([...warm.tunnel.changes, ...warm.dns.changes]), []);
    assert.deepEqual(warm.tunnel.outputs, { tunnelId: tunnel.id });
    const warmKube = await countRequests(cp, { since: mark2 });
    assert.equal(warmKube.writes, 0, `kube writes: ${JSON.stringify(warmKube.byResource)}`);

    assertNoSecrets(h.lines.join(''), token);
    assertNoSecrets(JSON.stringify([cold, warm]), token);
  });

  it('rewrites the Secret only when it differs from the tunnel token', async () => {
    const h = harness();
    await converge(h);
    const tunnelId = emu.liveTunnels()[0]!.id;
    const stale = await kubeGet(h, 'Secret', 'tunnel-token', 'cloudflared');
    await h.adapters.kube.apply({ ...stale!, metadata: { name: 'tunnel-token', namespace: 'cloudflared', labels: { ...OWNER_LABEL } }, data: { token: Buffer.from('stale').toString('base64') } }, { force: true });
    const mark = await auditMark(cp);
    emu.resetLog();
    const run = await driveStep(h, tunnelStep);
    assert.deepEqual(writesOf(run.changes).map((c) => `${c.action} ${c.target}`), ['update Secret cloudflared/tunnel-token']);
    assert.deepEqual(run.changes.find((c) => c.action === 'update')?.diff, [{ path: '$.data.token', from: '[redacted]', to: '[redacted]' }]);
    assert.deepEqual(emu.writes(), []);
    assert.equal((await countRequests(cp, { since: mark })).writes, 1);
    const fixed = await kubeGet(h, 'Secret', 'tunnel-token', 'cloudflared');
    assert.equal(Buffer.from((fixed?.data as Record<string, string>).token!, 'base64').toString(), emu.tunnelToken(tunnelId));
  });

  it('puts the ingress rules back when someone changed them in the dashboard', async () => {
    const h = harness();
    await converge(h);
    const t = [...emu.tunnels.values()][0]!;
    t.config = { ingress: [{ hostname: `echo-server.${ZONE}`, service: 'http://elsewhere:80', originRequest: { noTLSVerify: true } }, { service: 'http_status:404', originRequest: {} }] };
    emu.resetLog();
    const run = await driveStep(h, tunnelStep);
    assert.deepEqual(writesOf(run.changes).map((c) => c.target), ['Cloudflare tunnel homelab ingress']);
    assert.deepEqual(emu.writes().map((w) => w.method), ['PUT']);
    assert.deepEqual(emu.liveTunnels()[0]!.config?.ingress[0], { hostname: `echo-server.${ZONE}`, service: INGRESS_SERVICE, originRequest: {} });
  });
});

describe('records the daemon does not own', () => {
  it('are untouched; collisions are conflicts reported per host while the other records are written', async () => {
    const seeded = [
      emu.seedRecord(ZONE, { type: 'A', name: 'sonarr', content: '192.168.0.10', comment: 'my NAS' }), // same name, other target
      emu.seedRecord(ZONE, { type: 'A', name: 'grafana', content: '192.168.0.240' }), // same name, identical
      emu.seedRecord(ZONE, { type: 'A', name: 'nas', content: '192.168.0.10', comment: 'by hand' }), // other name
      emu.seedRecord(ZONE, { type: 'TXT', name: 'radarr', content: 'v=spf1 -all' }), // same name, other type
      emu.seedRecord(ZONE, { type: 'MX', name: ZONE, content: 'mail.example.net', priority: 10 }),
    ];
    const h = harness();
    const tunnel = await driveStep(h, tunnelStep);

    // plan shows the conflicts
    const ctx = stepContext(h, dnsStep, tunnel.outputs);
    const want = dnsStep.want(h.settings, tunnel.outputs);
    const planned = dnsStep.changes(want, await dnsStep.have(ctx, want));
    assert.deepEqual(
      planned.filter((c) => c.action === 'conflict').map((c) => c.target),
      [`DNS A grafana.${ZONE} (zone ${ZONE})`, `DNS A sonarr.${ZONE} (zone ${ZONE})`],
    );
    assert.match(planned.find((c) => c.target === `DNS A sonarr.${ZONE} (zone ${ZONE})`)!.detail!, /192\.168\.0\.10.*not created by homelab-bootstrap.*adopt/);

    // apply reports them as conflicts, and writes everything else
    await assert.rejects(driveStep(h, dnsStep, tunnel.outputs), (e: Error) => {
      assert.ok(e instanceof ConflictError);
      assert.match(e.message, /^2 DNS records not written because of a conflict/);
      // Each line names the zone too: the step's summary is all a reader of `apply` sees.
      assert.match(e.message, /; sonarr\.peterstorm\.io \(zone peterstorm\.io\): conflict: sonarr\.peterstorm\.io already has/);
      assert.match(e.message, /: grafana\.peterstorm\.io \(zone peterstorm\.io\): conflict: /);
      return true;
    });
    for (const s of seeded) assert.deepEqual(emu.records(ZONE).find((r) => r.id === s.id), s, `${s.type} ${s.name} changed`);
    const owned = emu.records(ZONE).filter((r) => r.comment === MARKER);
    assert.deepEqual(owned.map((r) => r.name).sort(), spec9('x').map((r) => r.name).filter((n) => !/^(sonarr|grafana)\./.test(n)).sort());

    // adopt on one host takes that record over explicitly; the other conflict stays
    const adopting = harness((s) => (s.hosts.find((x: { name: string }) => x.name === 'grafana').adopt = true));
    emu.resetLog();
    await assert.rejects(driveStep(adopting, dnsStep, tunnel.outputs), /^ConflictError: 1 DNS record not written.*sonarr/);
    assert.deepEqual(emu.writes().map((w) => `${w.method} ${w.path}`), [`PUT /zones/${emu.zone(ZONE).id}/dns_records/${seeded[1]!.id}`]);
    const grafana = emu.records(ZONE).find((r) => r.id === seeded[1]!.id)!;
    assert.equal(grafana.comment, MARKER);
    // The external host sits beside the apex's MX and radarr's TXT without any conflict.
    assert.ok(emu.records(ZONE).some((r) => r.name === `radarr.${ZONE}` && r.type === 'A' && r.comment === MARKER));
    assert.equal(emu.records(ZONE).find((r) => r.id === seeded[0]!.id)!.comment, 'my NAS');
  });
});

const SECOND = 'storm.example';

/** What a person changed must survive: every seeded record exactly as it was. */
function assertUntouched(zone: string, seeded: { id: string }[]) {
  for (const s of seeded) assert.deepEqual(emu.records(zone).find((r) => r.id === s.id), s, `record ${s.id} changed`);
}

describe('names the tunnel CNAME may share', () => {
  it("an external host beside TXT, MX and CAA records, and one at the apex beside the zone's NS and the mail records, converge and leave them alone", async () => {
    const seeded = [
      emu.seedRecord(ZONE, { type: 'TXT', name: 'echo-server', content: 'google-site-verification=abc' }),
      emu.seedRecord(ZONE, { type: 'CAA', name: 'echo-server', data: { flags: 0, tag: 'issue', value: 'pki.goog' } }),
      emu.seedRecord(ZONE, { type: 'MX', name: 'echo-server', content: 'mx.example.net', priority: 5 }),
      emu.seedRecord(ZONE, { type: 'MX', name: '@', content: 'mail.example.net', priority: 10 }),
      emu.seedRecord(ZONE, { type: 'TXT', name: '@', content: 'v=spf1 include:_spf.example.net -all' }),
      emu.seedRecord(ZONE, { type: 'CAA', name: '@', data: { flags: 0, tag: 'issue', value: 'letsencrypt.org' } }),
      emu.seedRecord(ZONE, { type: 'NS', name: '@', content: 'ada.ns.cloudflare.com' }),
      emu.seedRecord(ZONE, { type: 'NS', name: '@', content: 'bob.ns.cloudflare.com' }),
    ];
    const h = harness((s) => s.hosts.push({ name: '@', access: 'external' }));
    const run = await converge(h);
    const tunnelId = emu.liveTunnels()[0]!.id;
    assert.deepEqual(run.dns.changes.filter((c) => c.action === 'conflict'), []);
    const cname = (name: string) => emu.records(ZONE).filter((r) => r.name === name && r.type === 'CNAME').map((r) => [r.content, r.proxied, r.comment]);
    assert.deepEqual(cname(`echo-server.${ZONE}`), [[`${tunnelId}.cfargotunnel.com`, true, MARKER]]);
    assert.deepEqual(cname(ZONE), [[`${tunnelId}.cfargotunnel.com`, true, MARKER]]);
    assert.deepEqual(emu.liveTunnels()[0]!.config?.ingress.map((r) => r.hostname), [`echo-server.${ZONE}`, ZONE, undefined]);
    assertUntouched(ZONE, seeded);
    emu.resetLog();
    await converge(h);
    assert.deepEqual(emu.writes(), []);
  });
});

describe('a second zone served from the same tunnel', () => {
  it('hosts in another zone (apex and www) are reconciled there with the same rules; a no-op costs one list per zone and one zone lookup', async (t) => {
    emu.addZone(SECOND);
    const theirs = emu.seedRecord(SECOND, { type: 'A', name: 'nas', content: '192.168.0.10', comment: 'by hand' });
    const mx = emu.seedRecord(SECOND, { type: 'MX', name: '@', content: 'mail.example.net', priority: 10 });
    const withSecond = (s: Record<string, any>) => {
      s.cloudflare.zoneId = emu.zone(ZONE).id;
      s.hosts.push({ name: '@', zone: SECOND, access: 'external' }, { name: 'www', zone: SECOND, access: 'external' });
    };
    const h = harness(withSecond);
    const run = await converge(h);
    const tunnelId = emu.liveTunnels()[0]!.id;
    assert.deepEqual(zoneRecords(), spec9(tunnelId));
    assert.deepEqual(
      emu.records(SECOND).filter((r) => r.comment === MARKER).map((r) => [r.type, r.name, r.content, r.proxied]).sort(),
      [
        ['CNAME', SECOND, `${tunnelId}.cfargotunnel.com`, true],
        ['CNAME', `www.${SECOND}`, `${tunnelId}.cfargotunnel.com`, true],
      ],
    );
    assertUntouched(SECOND, [theirs, mx]);
    assert.deepEqual(emu.liveTunnels()[0]!.config?.ingress.map((r) => r.hostname), [`echo-server.${ZONE}`, SECOND, `www.${SECOND}`, undefined]);
    assert.ok(writesOf(run.dns.changes).some((c) => c.target === `DNS CNAME www.${SECOND} (zone ${SECOND})`));

    emu.resetLog();
    await converge(h);
    t.diagnostic(`no-op with two zones: ${JSON.stringify(emu.countByMethod())}`);
    assert.deepEqual(emu.writes(), []);
    const dnsGets = emu.requests.filter((r) => r.path.startsWith('/zones'));
    // The default zone's id is configured: one zone lookup (the second zone), one list per zone.
    assert.deepEqual(dnsGets.map((r) => (r.path === '/zones' ? `zones?${r.search}` : r.path.replace(/\/zones\/[0-9a-f]+/, '/zones/<id>'))), [
      '/zones/<id>/dns_records',
      `zones?name=${SECOND}&account.id=${ACCOUNT}`,
      '/zones/<id>/dns_records',
    ]);

    // A host removed from the second zone is pruned there.
    const fewer = harness((s) => {
      withSecond(s);
      s.hosts = s.hosts.filter((x: { name: string }) => x.name !== 'www');
    });
    await converge(fewer);
    assert.deepEqual(emu.records(SECOND).filter((r) => r.comment === MARKER).map((r) => r.name), [SECOND]);
  });
});

describe('a token that reaches one zone and not the other', () => {
  it('names the zone it cannot edit', async () => {
    emu.addZone(SECOND);
    const secondId = emu.zone(SECOND).id;
    // The emulator's tokens reach every zone; the fetch seam plays a token scoped to the first one.
    const h = harness(
      (s) => s.hosts.push({ name: 'www', zone: SECOND, access: 'external' }),
      {
        fetch: async (input, init) => {
          if (init?.method === 'POST' && String(input).includes(`/zones/${secondId}/`)) {
            return new Response(JSON.stringify({ success: false, errors: [{ code: 10000, message: 'Authentication error' }], messages: [], result: null }), { status: 403, headers: { 'content-type': 'application/json' } });
          }
          return fetch(input, init);
        },
      },
    );
    const tunnel = await driveStep(h, tunnelStep);
    await assert.rejects(driveStep(h, dnsStep, tunnel.outputs), /Cloudflare refused creating DNS CNAME www\.storm\.example .*lacks the permission "Zone › DNS › Edit" on zone storm\.example;/);
  });
});

describe('records made by hand, and notes', () => {
  it('a hand-made CNAME that already points at this tunnel is taken over without adopt; its comment becomes the note', async () => {
    const h = harness();
    const tunnel = await driveStep(h, tunnelStep);
    const tunnelId = tunnel.outputs.tunnelId as string;
    const hand = emu.seedRecord(ZONE, { type: 'CNAME', name: 'echo-server', content: `${tunnelId}.cfargotunnel.com`, proxied: true, comment: 'made in the dashboard' });
    emu.resetLog();
    const run = await driveStep(h, dnsStep, tunnel.outputs);
    assert.match(run.changes.find((c) => c.target.startsWith('DNS CNAME'))!.detail!, /already points at this tunnel/);
    assert.deepEqual(emu.writes().filter((w) => w.method !== 'POST').map((w) => `${w.method} ${w.path}`), [`PUT /zones/${emu.zone(ZONE).id}/dns_records/${hand.id}`]);
    assert.equal(emu.records(ZONE).find((r) => r.id === hand.id)!.comment, `${MARKER} made in the dashboard`);
    assert.deepEqual(zoneRecords().map((r) => ({ ...r, comment: r.comment?.startsWith(MARKER) ? MARKER : r.comment })), spec9(tunnelId));
  });

  it("an update keeps what a person wrote after the marker (cut to fit 100 characters, never the marker)", async () => {
    const h = harness();
    await converge(h);
    const plex = [...emu.zone(ZONE).records.values()].find((r) => r.name === `plex.${ZONE}`)!;
    const sonarr = [...emu.zone(ZONE).records.values()].find((r) => r.name === `sonarr.${ZONE}`)!;
    plex.content = '192.168.0.242';
    plex.comment = `${MARKER} - Plex has its own LB IP; ask Anna before changing`;
    sonarr.ttl = 300;
    sonarr.comment = `${MARKER}; ${'n'.repeat(100 - MARKER.length - 2)}`;
    emu.resetLog();
    await converge(h);
    assert.deepEqual(emu.writes().map((w) => w.method), ['PUT', 'PUT']);
    const after = (id: string) => emu.records(ZONE).find((r) => r.id === id)!;
    assert.equal(after(plex.id).content, '192.168.0.241');
    assert.equal(after(plex.id).comment, `${MARKER} - Plex has its own LB IP; ask Anna before changing`);
    assert.equal(after(sonarr.id).ttl, 1);
    assert.equal(after(sonarr.id).comment, sonarr.comment);
  });
});

describe('several installs on one zone (owner identity)', () => {
  const staging = (s: Record<string, any>) => {
    s.cloudflare.tunnelName = 'staging';
    s.hosts = [
      { name: 'stage-app', access: 'local', ip: '192.168.0.241' },
      { name: 'stage-web', access: 'external' },
      { name: 'sonarr', access: 'local' }, // a name the first install owns
    ];
  };

  it("two installs with different owners share a zone over several runs without deleting each other's records", async () => {
    const home = harness();
    const stage = harness(staging);
    const homeRecords = () => emu.records(ZONE).filter((r) => r.comment === MARKER).map((r) => r.id).sort();
    const stageRecords = () => emu.records(ZONE).filter((r) => r.comment === `${LEGACY} owner=staging`).map((r) => `${r.type} ${r.name}`).sort();
    await converge(home);
    const homeIds = homeRecords();
    assert.equal(homeIds.length, 9);
    for (let round = 1; round <= 3; round++) {
      emu.resetLog();
      await assert.rejects(converge(stage), (e: Error) => e instanceof ConflictError && /sonarr\.peterstorm\.io already has A sonarr\.peterstorm\.io → 192\.168\.0\.240, owned by another homelab-bootstrap install \(owner=homelab\)/.test(e.message));
      const stageWrites = emu.writes().filter((w) => w.path.includes('dns_records'));
      assert.deepEqual(stageWrites.map((w) => w.method), round === 1 ? ['POST', 'POST'] : [], `round ${round}: staging DNS writes`);
      emu.resetLog();
      await converge(home);
      assert.deepEqual(emu.writes(), [], `round ${round}: the first install writes nothing`);
      assert.deepEqual(homeRecords(), homeIds, `round ${round}: the first install's records are all there`);
      assert.deepEqual(stageRecords(), [`A stage-app.${ZONE}`, `CNAME stage-web.${ZONE}`], `round ${round}: the second install's records are all there`);
    }
  });

  it('an install upgraded from the bare marker takes its records over in place: no delete, no create, notes kept', async () => {
    const h = harness();
    await converge(h);
    // What the version before owner ids left in the zone.
    for (const r of emu.zone(ZONE).records.values()) r.comment = r.name === `plex.${ZONE}` ? `${LEGACY} (Plex LB)` : LEGACY;
    const before = emu.records(ZONE).map((r) => r.id).sort();
    emu.resetLog();
    const run = await converge(h);
    assert.deepEqual([...new Set(emu.writes().map((w) => w.method))], ['PUT']);
    assert.equal(emu.writes().filter((w) => w.path.includes('dns_records')).length, 9);
    assert.deepEqual(emu.records(ZONE).map((r) => r.id).sort(), before, 'the same records, never a gap');
    assert.ok(run.dns.changes.filter((c) => c.action === 'update').every((c) => /earlier version/.test(c.detail ?? '')));
    assert.equal(emu.records(ZONE).find((r) => r.name === `plex.${ZONE}`)!.comment, `${MARKER} (Plex LB)`);
    assert.equal(emu.records(ZONE).filter((r) => r.comment === MARKER).length, 8);
    emu.resetLog();
    await converge(h);
    assert.deepEqual(emu.writes(), []);
  });
});

describe('two installs upgraded from the bare marker on one zone', () => {
  it("each takes over only its own names, over several runs: no record of either is deleted, the other's are reported", async () => {
    const stagingOnly = (s: Record<string, any>) => {
      s.cloudflare.tunnelName = 'staging';
      s.hosts = [
        { name: 'stage-app', access: 'local', ip: '192.168.0.241' },
        { name: 'stage-web', access: 'external' },
      ];
    };
    const home = harness();
    const stage = harness(stagingOnly);
    await converge(home);
    await converge(stage);
    // Both ran the version before owner ids: every record carries the bare marker.
    for (const r of emu.zone(ZONE).records.values()) r.comment = LEGACY;
    const ids = emu.records(ZONE).map((r) => r.id).sort();
    assert.equal(ids.length, 11);
    const markers = () => Object.fromEntries(emu.records(ZONE).map((r) => [r.name.replace(`.${ZONE}`, ''), r.comment]));

    for (let round = 1; round <= 3; round++) {
      emu.resetLog();
      const h = await converge(home);
      assert.deepEqual(
        h.dns.notes.map((n) => /^DNS (\S+ \S+) .*before owner ids.*left alone/.exec(n)?.[1]),
        round === 1 ? [`A stage-app.${ZONE}`, `CNAME stage-web.${ZONE}`] : [],
        `round ${round}: the first install reports the other's bare-marker records until that one upgrades`,
      );
      const st = await converge(stage);
      assert.deepEqual(st.dns.notes, [], `round ${round}: the first install's records carry its owner now`);
      assert.ok(!emu.requests.some((r) => r.method === 'DELETE' || r.method === 'POST'), `round ${round}: nothing deleted or created`);
      assert.deepEqual(emu.records(ZONE).map((r) => r.id).sort(), ids, `round ${round}: every record of both installs is there, the same ones`);
      const m = markers();
      assert.equal(m['stage-app'], `${LEGACY} owner=staging`);
      assert.equal(m['stage-web'], `${LEGACY} owner=staging`);
      assert.equal(Object.values(m).filter((c) => c === MARKER).length, 9);
    }
    assert.ok(home.lines.some((l) => /"level":"warn"/.test(l) && l.includes(`DNS A stage-app.${ZONE}`) && l.includes('delete it by hand')), 'the log says it too');
  });
});

describe('a colliding record added by hand', () => {
  it('a second A on a managed name: plan exits 2 showing it; apply writes nothing (no Lease either) and exits 4 naming the record and what to do', async () => {
    const h = harness();
    await converge(h);
    const second = emu.seedRecord(ZONE, { type: 'A', name: 'sonarr', content: '192.168.0.99' });
    const settingsFile = join(dir, 'collide.json');
    const s = structuredClone(example);
    spec9Hosts(s);
    Object.assign(s, { kubeconfigFile: cp.kubeconfigPath });
    Object.assign(s.cloudflare, { apiTokenFile: join(dir, 'cf-token'), apiBaseUrl: emu.baseUrl, accountId: ACCOUNT });
    writeFileSync(settingsFile, JSON.stringify(s));
    const stateDir = mkdtempSync(join(dir, 'state-'));
    const cli = async (...argv: string[]) => {
      let out = '';
      let err = '';
      const code = await main([...argv, '--config', settingsFile, '--state-dir', stateDir, '--log-level', 'silent'], { out: (x) => void (out += x), err: (x) => void (err += x) });
      return { code, out, err };
    };

    const plan = await cli('plan', '--only', 'dns');
    assert.equal(plan.code, EXIT.planChanges, plan.out + plan.err);
    assert.match(plan.out, /! conflict DNS A sonarr\.peterstorm\.io \(zone peterstorm\.io\): sonarr\.peterstorm\.io already has A sonarr\.peterstorm\.io → 192\.168\.0\.99, not created by homelab-bootstrap; .*delete it in the Cloudflare dashboard, or set "adopt": true/);

    emu.resetLog();
    const mark = await auditMark(cp);
    for (let i = 0; i < 2; i++) {
      const apply = await cli('apply', '--only', 'dns');
      assert.equal(apply.code, EXIT.conflicts, apply.out + apply.err);
      assert.equal(EXIT.conflicts, 4);
      assert.match(apply.out, /dns\s+conflict\s+0 .*sonarr\.peterstorm\.io \(zone peterstorm\.io\): conflict: .*192\.168\.0\.99/);
    }
    assert.deepEqual(emu.writes(), [], 'no Cloudflare write');
    const kube = await countRequests(cp, { since: mark });
    assert.equal(kube.writes, 0, `no apiserver write, the Lease included: ${JSON.stringify(kube.byResource)}`);
    assert.equal(await h.adapters.kube.get('coordination.k8s.io/v1', 'Lease', 'homelab-bootstrap', 'kube-system'), undefined);
    assert.deepEqual(emu.records(ZONE).find((r) => r.id === second.id), second);
  });
});

describe('adoption of external-dns records (cloudflare.adoptExternalDnsOwner)', () => {
  it("updates the old records in place and deletes only the named owner's registry TXT records on adopted names", async () => {
    const h0 = harness();
    const tunnelId = (await driveStep(h0, tunnelStep)).outputs.tunnelId as string;
    const registry = (owner: string, res: string) => `"heritage=external-dns,external-dns/owner=${owner},external-dns/resource=ingress/${res}"`;
    const sonarr = emu.seedRecord(ZONE, { type: 'A', name: 'sonarr', content: '192.168.0.242', ttl: 300 });
    const echo = emu.seedRecord(ZONE, { type: 'CNAME', name: 'echo-server', content: 'old-lb.example.net', proxied: true });
    const gone = [
      emu.seedRecord(ZONE, { type: 'TXT', name: 'sonarr', content: registry('homelab', 'media/sonarr') }), // old format, same name
      emu.seedRecord(ZONE, { type: 'TXT', name: 'a-sonarr', content: registry('homelab', 'media/sonarr') }), // new format
      emu.seedRecord(ZONE, { type: 'TXT', name: 'cname-echo-server', content: registry('homelab', 'echo/echo') }),
    ];
    const kept = [
      emu.seedRecord(ZONE, { type: 'TXT', name: 'a-radarr', content: registry('another-cluster', 'media/radarr') }),
      emu.seedRecord(ZONE, { type: 'TXT', name: 'sonarr', content: 'v=spf1 -all' }),
      emu.seedRecord(ZONE, { type: 'TXT', name: 'a-nas', content: registry('homelab', 'misc/nas') }), // not a host here
    ];
    const h = harness((s) => {
      s.cloudflare.adopt = true;
      s.cloudflare.adoptExternalDnsOwner = 'homelab';
    });
    emu.resetLog();
    await driveStep(h, dnsStep, { tunnelId });
    const zid = emu.zone(ZONE).id;
    const w = emu.writes().map((x) => `${x.method} ${x.path}`);
    assert.ok(w.includes(`PUT /zones/${zid}/dns_records/${sonarr.id}`));
    assert.ok(w.includes(`PUT /zones/${zid}/dns_records/${echo.id}`));
    assert.deepEqual(w.filter((x) => x.startsWith('DELETE')).sort(), gone.map((g) => `DELETE /zones/${zid}/dns_records/${g.id}`).sort());
    assert.equal(w.filter((x) => x.startsWith('POST')).length, 7, 'only the seven hosts that had no record are created');
    const now = (id: string) => emu.records(ZONE).find((r) => r.id === id);
    assert.deepEqual([now(sonarr.id)!.content, now(sonarr.id)!.ttl, now(sonarr.id)!.comment], ['192.168.0.240', 1, MARKER]);
    assert.deepEqual([now(echo.id)!.content, now(echo.id)!.comment], [`${tunnelId}.cfargotunnel.com`, MARKER]);
    assertUntouched(ZONE, kept);
    for (const g of gone) assert.equal(now(g.id), undefined);
    emu.resetLog();
    await driveStep(h, dnsStep, { tunnelId });
    assert.deepEqual(emu.writes(), []);
  });
});

describe('a host removed from settings', () => {
  it('has its owned record deleted, and nothing else changes', async () => {
    const h = harness();
    const by = emu.seedRecord(ZONE, { type: 'A', name: 'nas', content: '192.168.0.10', comment: 'by hand' });
    await converge(h);
    const before = emu.records(ZONE);
    const gone = before.find((r) => r.name === `transmission.${ZONE}`)!;
    const fewer = harness((s) => (s.hosts = s.hosts.filter((x: { name: string }) => x.name !== 'transmission')));
    emu.resetLog();
    const run = await converge(fewer);
    assert.deepEqual(writesOf([...run.tunnel.changes, ...run.dns.changes]).map((c) => `${c.action} ${c.target}`), [`delete DNS A transmission.${ZONE} → 192.168.0.240 (zone ${ZONE})`]);
    assert.deepEqual(emu.writes().map((w) => `${w.method} ${w.path}`), [`DELETE /zones/${emu.zone(ZONE).id}/dns_records/${gone.id}`]);
    assert.deepEqual(emu.records(ZONE), before.filter((r) => r.id !== gone.id));
    assert.ok(emu.records(ZONE).some((r) => r.id === by.id));
  });

  it('a host switched from local to external: its A is deleted, then its CNAME created, and it joins the tunnel', async () => {
    await converge(harness());
    const h = harness((s) => (s.hosts.find((x: { name: string }) => x.name === 'grafana').access = 'external'));
    emu.resetLog();
    await converge(h);
    assert.deepEqual(
      emu.writes().map((w) => w.method),
      ['PUT', 'DELETE', 'POST'],
    );
    const tunnelId = emu.liveTunnels()[0]!.id;
    assert.deepEqual(
      emu.records(ZONE).filter((r) => r.name === `grafana.${ZONE}`).map((r) => [r.type, r.content, r.proxied]),
      [['CNAME', `${tunnelId}.cfargotunnel.com`, true]],
    );
    assert.deepEqual(emu.liveTunnels()[0]!.config?.ingress.map((r) => r.hostname), [`echo-server.${ZONE}`, `grafana.${ZONE}`, undefined]);
  });
});

describe('faults', () => {
  /** After any fault: exactly one tunnel, the nine records once each, and a following run writes nothing. */
  async function assertConverged(h: CfHarness) {
    const tunnels = emu.liveTunnels();
    assert.equal(tunnels.length, 1, 'exactly one tunnel');
    assert.equal(emu.tunnels.size, 1, 'no tunnel was created and deleted again');
    assert.deepEqual(zoneRecords(), spec9(tunnels[0]!.id), 'the nine records, no duplicates');
    emu.clearFaults();
    emu.resetLog();
    await converge(h);
    assert.deepEqual(emu.writes(), [], 'a following run writes nothing');
  }

  it('429 bursts with retry-after', async (t) => {
    const h = harness();
    emu.rateLimit(5, { retryAfterSeconds: 1 });
    emu.rateLimit(3, { retryAfterSeconds: 1, match: { method: 'POST', path: /dns_records$/ } });
    const run = await converge(h);
    t.diagnostic(`attempts: tunnel ${run.tunnel.attempts}, dns ${run.dns.attempts}; 429s answered: ${emu.requests.filter((r) => r.status === 429).length}`);
    assert.equal(emu.requests.filter((r) => r.status === 429).length, 8);
    await assertConverged(h);
  });

  it('a long retry-after is handed to the engine as TransientError.retryAfterMs instead of sleeping inside the call', async () => {
    const h = harness();
    emu.rateLimit(1, { retryAfterSeconds: 120 });
    const ctx = stepContext(h, tunnelStep, {});
    await assert.rejects(tunnelStep.have(ctx, tunnelStep.want(h.settings, {})), (e: unknown) => {
      assert.ok(isTransient(e));
      assert.equal(retryAfterMs(e), 120_000);
      return true;
    });
    assert.equal(emu.requests.length, 1, 'the SDK did not retry it itself');
  });

  it('5xx bursts', async () => {
    const h = harness();
    emu.serverErrors(3, { status: 502 });
    emu.serverErrors(2, { status: 500, match: { method: 'POST' } });
    emu.serverErrors(2, { status: 503, match: { method: 'PUT' } });
    await converge(h);
    assert.ok(emu.requests.filter((r) => typeof r.status === 'number' && r.status >= 500).length === 7);
    await assertConverged(h);
  });

  it('creates whose response is lost (connection reset): re-listed, never duplicated', async () => {
    const h = harness();
    emu.loseResponse({ match: { method: 'POST', path: /cfd_tunnel$/ } });
    emu.loseResponse({ times: 3, match: { method: 'POST', path: /dns_records$/ } });
    emu.loseResponse({ match: { method: 'PUT' } });
    await converge(h);
    assert.equal(emu.requests.filter((r) => r.status === 'lost').length, 5);
    await assertConverged(h);
    assert.match(h.lines.join(''), /found it on re-list/);
  });

  it('creates that time out (the answer never comes): re-listed, never duplicated', async () => {
    const h = harness(undefined, { timeoutMs: 400 });
    emu.loseResponse({ mode: 'hang', match: { method: 'POST', path: /cfd_tunnel$/ } });
    emu.loseResponse({ mode: 'hang', times: 2, match: { method: 'POST', path: /dns_records$/ } });
    await converge(h);
    assert.equal(emu.requests.filter((r) => r.status === 'hung').length, 3);
    await assertConverged(h);
  });

  it('another creator made the same tunnel meanwhile: the older one is kept, the one just made is deleted', async () => {
    // The fetch seam plays the other creator: right after our create, an older tunnel of the name appears.
    const rival = { id: '00000000-0000-4000-8000-000000000001', account_tag: ACCOUNT, name: 'homelab', created_at: '2020-01-01T00:00:00.000Z', deleted_at: null, config_src: 'cloudflare' as const, secret: Buffer.alloc(32, 1).toString('base64'), config: null, version: 0, configCreatedAt: null, connectors: [], connsActiveAt: null, connsInactiveAt: null };
    const h = harness(undefined, {
      fetch: async (input, init) => {
        const res = await fetch(input, init);
        if (init?.method === 'POST' && String(input).endsWith('/cfd_tunnel')) emu.tunnels.set(rival.id, { ...rival });
        return res;
      },
    });
    const run = await converge(h);
    assert.deepEqual(run.tunnel.outputs, { tunnelId: rival.id });
    assert.deepEqual(emu.liveTunnels().map((t) => t.id), [rival.id]);
    assert.equal(emu.writes().filter((w) => w.method === 'DELETE' && w.path.includes('cfd_tunnel')).length, 1);
    assert.deepEqual(zoneRecords(), spec9(rival.id));
  });

  it('a slow API, some answers slower than the client timeout', async () => {
    const h = harness(undefined, { timeoutMs: 500 });
    emu.slow(700, { times: 2, match: { method: 'GET' } });
    emu.slow(700, { times: 1, match: { method: 'POST', path: /dns_records$/ } });
    emu.slow(60);
    const t0 = Date.now();
    await converge(h);
    assert.ok(Date.now() - t0 > 26 * 60);
    await assertConverged(h);
  });
});

describe('credentials and permissions', () => {
  /** A cluster step stand-in: writes one ConfigMap through the same adapters. */
  const clusterStep: Step<KubeObject, KubeObject | undefined> = {
    name: 'age-key',
    needs: [],
    want: () => ({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'cluster-step-ran', namespace: 'default', labels: { ...OWNER_LABEL } }, data: { ok: 'yes' } }),
    have: (ctx) => ctx.adapters.kube.get('v1', 'ConfigMap', 'cluster-step-ran', 'default'),
    changes: (_w, have) => [{ action: have ? 'noop' : 'create', target: 'ConfigMap default/cluster-step-ran' }],
    async change(ctx, _c, want) {
      await ctx.adapters.kube.apply(want);
    },
    rendered: () => ({}),
  };

  async function runEngine(h: CfHarness) {
    await h.adapters.kube.delete('v1', 'ConfigMap', 'cluster-step-ran', 'default');
    return runSteps([clusterStep as Step, tunnelStep as Step, dnsStep as Step], {
      mode: 'apply',
      settings: h.settings,
      log: h.log,
      retry: { attempts: 2, baseMs: 10, maxMs: 20 },
      context: (step, upstream, signal) => stepContext(h, step, upstream, signal),
    });
  }

  it('a token without DNS Edit: dns fails naming the permission; tunnel and the cluster steps are unaffected', async () => {
    emu.setToken(TOKEN, ['zone:read', 'dns:read', 'tunnel:edit'] satisfies Permission[]);
    const h = harness();
    const reports = await runEngine(h);
    const by = Object.fromEntries(reports.map((r) => [r.step, r]));
    assert.equal(by['age-key']!.outcome, 'changed');
    assert.equal(by.tunnel!.outcome, 'changed');
    assert.equal(by.dns!.outcome, 'failed');
    assert.match(by.dns!.error!, /Cloudflare refused creating DNS .* \(HTTP 403: 10000 Authentication error\): the API token from .*cf-token \(\$\.cloudflare\.apiTokenFile\) lacks the permission "Zone › DNS › Edit" on zone peterstorm\.io/);
    assert.equal(emu.writes().filter((w) => w.path.includes('dns_records')).length, 1, 'stopped at the first refusal');
    assert.ok(await kubeGet(h, 'ConfigMap', 'cluster-step-ran', 'default'));
    assertNoSecrets(JSON.stringify(reports) + h.lines.join(''));
  });

  it('a token without Tunnel Edit: the tunnel step names the permission, dns is blocked, the cluster steps run', async () => {
    emu.setToken(TOKEN, ['zone:read', 'dns:edit', 'tunnel:read'] satisfies Permission[]);
    const h = harness();
    const by = Object.fromEntries((await runEngine(h)).map((r) => [r.step, r]));
    assert.equal(by['age-key']!.outcome, 'changed');
    assert.equal(by.tunnel!.outcome, 'failed');
    assert.match(by.tunnel!.error!, /lacks the permission "Account › Cloudflare Tunnel › Edit" on account 0123456789abcdef0123456789abcdef/);
    assert.equal(by.dns!.outcome, 'blocked');
  });

  it('an invalid token (403): a clear error that never quotes the token; the cluster steps run', async () => {
    emu.removeToken(TOKEN);
    emu.setToken('the-real-token-is-another-one');
    const h = harness();
    const reports = await runEngine(h);
    const by = Object.fromEntries(reports.map((r) => [r.step, r]));
    assert.equal(by['age-key']!.outcome, 'changed');
    assert.equal(by.tunnel!.outcome, 'failed');
    assert.match(by.tunnel!.error!, /Cloudflare rejected the API token from .*cf-token \(\$\.cloudflare\.apiTokenFile\) .*HTTP 403: 9109 Invalid access token.*invalid, expired or revoked/);
    assertNoSecrets(JSON.stringify(reports) + h.lines.join(''));
  });

  it('a token without Zone Read: the zone is "not found", and the error says why that may be', async () => {
    emu.setToken(TOKEN, ['dns:edit', 'tunnel:edit'] satisfies Permission[]);
    const h = harness();
    const tunnel = await driveStep(h, tunnelStep);
    await assert.rejects(driveStep(h, dnsStep, tunnel.outputs), /zone peterstorm\.io was not found in account .*"Zone › Zone › Read"/);
    // A configured zone id needs no zone lookup, hence no Zone Read.
    const withId = harness((s) => (s.cloudflare.zoneId = emu.zone(ZONE).id));
    await driveStep(withId, dnsStep, tunnel.outputs);
    assert.equal(emu.records(ZONE).length, 9);
  });
});

describe('the cluster is down', () => {
  it('the tunnel is still made and its id still reaches DNS; the step fails only for the Secret', async () => {
    const deadKubeconfig = join(dir, 'dead-kubeconfig');
    writeFileSync(deadKubeconfig, readFileSync(cp.kubeconfigPath, 'utf8').replace(/server: https:\/\/127\.0\.0\.1:\d+/, 'server: https://127.0.0.1:9'));
    const h = harness((s) => (s.kubeconfigFile = deadKubeconfig));
    const err = await driveStep(h, tunnelStep, {}, 2).then(
      () => assert.fail('the tunnel step succeeded without a cluster'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof PartialStepError, String(err));
    assert.ok(isTransient(err), 'the cluster may come back: the engine retries');
    const tunnelId = emu.liveTunnels()[0]!.id;
    assert.deepEqual(err.outputs, { tunnelId });
    assert.match(err.message, /tunnel homelab \(.*\) is in place, but Secret cloudflared\/tunnel-token was not written: .*cannot reach the API server/);
    assert.equal(emu.liveTunnels().length, 1, 'the retry did not create a second tunnel');

    // plan shows the Secret as waiting for the cluster
    const ctx = stepContext(h, tunnelStep, {});
    const want = tunnelStep.want(h.settings, {});
    const changes = tunnelStep.changes(want, await tunnelStep.have(ctx, want));
    assert.deepEqual(changes.map((c) => `${c.action} ${c.target}`), ['noop Cloudflare tunnel homelab', 'noop Cloudflare tunnel homelab ingress', 'wait Secret cloudflared/tunnel-token']);

    await driveStep(h, dnsStep, err.outputs);
    assert.deepEqual(zoneRecords(), spec9(tunnelId));
    assertNoSecrets(err.message + h.lines.join(''), emu.tunnelToken(tunnelId));
  });
});

// The pure halves of the dns and tunnel steps: desired records and ingress from settings, and
// the plan against what the zone holds. No I/O: every case is a table of records.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { parseSettings } from '../../src/settings/load.ts';
import type { Settings } from '../../src/settings/schema.ts';
import {
  desiredDns,
  isOwned,
  namesToLookUp,
  opChange,
  planDns,
  recordDiff,
  type DnsWant,
  type ExistingRecord,
} from '../../src/desired/dns.ts';
import { desiredIngress, desiredTunnel, ingressDiff } from '../../src/desired/tunnel.ts';
import { dnsStep } from '../../src/steps/dns.ts';
import { tunnelStep, type TunnelHave } from '../../src/steps/tunnel.ts';
import { RENDER_UPSTREAM } from '../../src/steps/types.ts';
import { Secret } from '../../src/secret.ts';

const MARKER = 'managed-by=homelab-bootstrap';
const TUNNEL = '6f1a8a7e-0b0e-4c1e-9a57-3f4f7f1f2a10';
const example = JSON.parse(readFileSync(new URL('../../examples/homelab.json', import.meta.url), 'utf8')) as Record<string, any>;

function settings(mutate: (s: Record<string, any>) => void = () => {}): Settings {
  const s = structuredClone(example);
  mutate(s);
  return parseSettings(s);
}

let ids = 0;
function rec(type: string, name: string, content: string, over: Partial<ExistingRecord> = {}): ExistingRecord {
  return { id: `r${++ids}`, type, name, content, proxied: false, ttl: 1, comment: MARKER, ...over };
}

/** The zone exactly as a converged run leaves it, read back the way the API returns it. */
function converged(want: DnsWant): ExistingRecord[] {
  return want.records.map((d) => rec(d.type, d.name, d.content, { proxied: d.proxied, ttl: d.proxied ? 1 : d.ttl, comment: d.comment }));
}

const actions = (want: DnsWant, have: ExistingRecord[]) => planDns(want, have).map(opChange).map((c) => `${c.action} ${c.target}`);

describe('desired DNS records', () => {
  it("the example homelab gives SPEC.md's nine records", () => {
    const want = desiredDns(settings(), TUNNEL);
    assert.equal(want.zone, 'peterstorm.io');
    assert.deepEqual(
      want.records.map((r) => [r.type, r.name, r.content, r.proxied, r.ttl, r.comment]),
      [
        ['CNAME', 'echo-server.peterstorm.io', `${TUNNEL}.cfargotunnel.com`, true, 1, MARKER],
        ['A', 'sonarr.peterstorm.io', '192.168.0.240', false, 1, MARKER],
        ['A', 'radarr.peterstorm.io', '192.168.0.240', false, 1, MARKER],
        ['A', 'prowlarr.peterstorm.io', '192.168.0.240', false, 1, MARKER],
        ['A', 'overseerr.peterstorm.io', '192.168.0.240', false, 1, MARKER],
        ['A', 'transmission.peterstorm.io', '192.168.0.240', false, 1, MARKER],
        ['A', 'plex.peterstorm.io', '192.168.0.241', false, 1, MARKER],
        ['A', 'grafana.peterstorm.io', '192.168.0.240', false, 1, MARKER],
        ['A', 'argocd.peterstorm.io', '192.168.0.240', false, 1, MARKER],
      ],
    );
    assert.ok(MARKER.length <= 100);
  });

  it('takes a host TTL for local hosts; proxied records are always TTL 1', () => {
    const want = desiredDns(
      settings((s) => {
        s.hosts[0].ttl = 300;
        s.hosts[1].ttl = 300;
      }),
      TUNNEL,
    );
    assert.equal(want.records[0]!.ttl, 1);
    assert.equal(want.records[1]!.ttl, 300);
  });

  it('normalises names to lowercase FQDNs and takes adopt per host over the global setting', () => {
    const want = desiredDns(
      settings((s) => {
        s.hosts[1].name = 'Sonarr.PeterStorm.io.';
        s.hosts[1].adopt = false;
        s.cloudflare.adopt = true;
      }),
      TUNNEL,
    );
    assert.equal(want.records[1]!.name, 'sonarr.peterstorm.io');
    assert.equal(want.records[1]!.adopt, false);
    assert.equal(want.records[2]!.adopt, true);
  });

  it('renders with the tunnel-id placeholder and contacts nothing', () => {
    const s = settings();
    const r = dnsStep.rendered(dnsStep.want(s, RENDER_UPSTREAM));
    assert.equal(r.dns?.zone, 'peterstorm.io');
    assert.equal(r.dns?.records[0]?.content, '<tunnel-id>.cfargotunnel.com');
    assert.equal(r.dns?.records.length, 9);
    const t = tunnelStep.rendered(tunnelStep.want(s, RENDER_UPSTREAM));
    assert.deepEqual(t.tunnel, { name: 'homelab', ingress: [{ hostname: 'echo-server.peterstorm.io', service: 'http://cilium-ingress.kube-system.svc.cluster.local:80' }, { service: 'http_status:404' }] });
    assert.match(JSON.stringify(t.objects), /<token of Cloudflare tunnel homelab>/);
  });
});

describe('ownership marker', () => {
  it('is the marker alone or followed by a separator and a note', () => {
    assert.equal(isOwned(MARKER, MARKER), true);
    assert.equal(isOwned(`${MARKER} (sonarr)`, MARKER), true);
    assert.equal(isOwned(`${MARKER};note`, MARKER), true);
    assert.equal(isOwned(`${MARKER}per`, MARKER), false);
    assert.equal(isOwned('by hand', MARKER), false);
    assert.equal(isOwned(null, MARKER), false);
    assert.equal(isOwned('', MARKER), false);
  });
});

describe('planDns', () => {
  const want = desiredDns(settings(), TUNNEL);

  it('an empty zone: nine creates', () => {
    const ops = planDns(want, []);
    assert.deepEqual(
      ops.map((o) => o.kind),
      Array(9).fill('create'),
    );
  });

  it('a converged zone: only noops, so nothing flaps', () => {
    assert.ok(planDns(want, converged(want)).every((o) => o.kind === 'noop'));
  });

  it('compares as the API returns: proxied reads back TTL 1, CNAME content in any case with a trailing dot, a note after the marker', () => {
    const w = desiredDns(settings((s) => (s.hosts[0].ttl = 600)), TUNNEL);
    const have = converged(w).map((r) => (r.type === 'CNAME' ? { ...r, content: `${TUNNEL.toUpperCase()}.CFARGOTUNNEL.COM.`, ttl: 1, comment: `${MARKER} by the daemon` } : r));
    assert.ok(planDns(w, have).every((o) => o.kind === 'noop'));
  });

  it('a changed target or TTL is an update with field diffs', () => {
    const have = converged(want).map((r) => (r.name === 'plex.peterstorm.io' ? { ...r, content: '192.168.0.242', ttl: 300 } : r));
    const ops = planDns(want, have).filter((o) => o.kind !== 'noop');
    assert.equal(ops.length, 1);
    const c = opChange(ops[0]!);
    assert.equal(c.action, 'update');
    assert.equal(c.target, 'DNS A plex.peterstorm.io');
    assert.deepEqual(c.diff, [
      { path: '$.content', from: '192.168.0.242', to: '192.168.0.241' },
      { path: '$.ttl', from: 300, to: 1 },
    ]);
  });

  it('an unowned record on a wanted name is a conflict; nothing on that name is touched', () => {
    const have = [rec('A', 'sonarr.peterstorm.io', '192.168.0.10', { comment: null })];
    const ops = planDns(want, have);
    const conflict = ops.find((o) => o.kind === 'conflict');
    assert.ok(conflict && conflict.kind === 'conflict');
    assert.equal(conflict.record.name, 'sonarr.peterstorm.io');
    assert.match(conflict.detail, /already has A sonarr\.peterstorm\.io → 192\.168\.0\.10, not created by homelab-bootstrap.*adopt/);
    assert.ok(!ops.some((o) => (o.kind === 'update' || o.kind === 'delete') && (o.kind === 'delete' ? o.existing : o.existing).id === have[0]!.id));
    assert.equal(ops.filter((o) => o.kind === 'create').length, 8);
  });

  it('an identical unowned record is still a conflict without adopt', () => {
    const have = [rec('A', 'sonarr.peterstorm.io', '192.168.0.240', { comment: 'made by hand' })];
    assert.ok(actions(want, have).includes('conflict DNS A sonarr.peterstorm.io'));
  });

  it('adopt takes over an identical or a differing unowned record by writing it (marker included)', () => {
    const w = desiredDns(settings((s) => (s.hosts[1].adopt = true)), TUNNEL);
    for (const content of ['192.168.0.240', '192.168.0.10']) {
      const have = [rec('A', 'sonarr.peterstorm.io', content, { comment: null })];
      const op = planDns(w, have).find((o) => o.kind === 'update');
      assert.ok(op && op.kind === 'update');
      assert.equal(op.adopted, true);
      assert.equal(op.existing.id, have[0]!.id);
      assert.deepEqual(op.diff.at(-1), { path: '$.comment', to: MARKER });
      assert.match(opChange(op).detail ?? '', /adopt/);
    }
  });

  it('adopt of an unowned CNAME where an A is wanted: delete it, then create the A', () => {
    const w = desiredDns(settings((s) => (s.cloudflare.adopt = true)), TUNNEL);
    const have = [rec('CNAME', 'sonarr.peterstorm.io', 'nas.example.net', { comment: null })];
    const a = actions(w, have);
    assert.ok(a.indexOf('delete DNS CNAME sonarr.peterstorm.io → nas.example.net') < a.indexOf('create DNS A sonarr.peterstorm.io'));
  });

  it('other types on the name of a wanted A are left alone (no conflict); next to a wanted CNAME they are a conflict even with adopt', () => {
    const txtA = [rec('TXT', 'sonarr.peterstorm.io', 'v=spf1 -all', { comment: null }), rec('AAAA', 'sonarr.peterstorm.io', '2001:db8::1', { comment: null })];
    const a = actions(want, txtA);
    assert.ok(a.includes('create DNS A sonarr.peterstorm.io'));
    assert.ok(!a.some((x) => x.includes('TXT') || x.includes('AAAA')));
    const w = desiredDns(settings((s) => (s.hosts[0].adopt = true)), TUNNEL);
    const txtCname = [rec('TXT', 'echo-server.peterstorm.io', 'hello', { comment: null })];
    const op = planDns(w, txtCname).find((o) => o.kind === 'conflict');
    assert.ok(op && op.kind === 'conflict');
    assert.match(op.detail, /adopt takes over only A, AAAA and CNAME/);
  });

  it('a host removed from settings: its owned record is deleted, unowned records elsewhere are not', () => {
    const have = [...converged(want), rec('A', 'old.peterstorm.io', '192.168.0.240'), rec('A', 'nas.peterstorm.io', '192.168.0.10', { comment: 'by hand' })];
    const changes = planDns(want, have).map(opChange).filter((c) => c.action !== 'noop');
    assert.deepEqual(changes, [{ action: 'delete', target: 'DNS A old.peterstorm.io → 192.168.0.240', detail: 'owned by homelab-bootstrap and its host is no longer in hosts' }]);
  });

  it('a type change (local → external) is delete, then create', () => {
    const w = desiredDns(settings((s) => (s.hosts[1] = { name: 'sonarr', access: 'external' })), TUNNEL);
    const have = converged(want);
    const a = actions(w, have).filter((x) => !x.startsWith('noop'));
    assert.deepEqual(a, ['delete DNS A sonarr.peterstorm.io → 192.168.0.240', 'create DNS CNAME sonarr.peterstorm.io']);
    const del = planDns(w, have).find((o) => o.kind === 'delete');
    assert.match(del && del.kind === 'delete' ? del.reason : '', /type change/);
  });

  it('two owned records of one name: the matching one is kept, the other deleted', () => {
    const have = [...converged(want), rec('A', 'plex.peterstorm.io', '192.168.0.99')];
    assert.deepEqual(actions(want, have).filter((x) => !x.startsWith('noop')), ['delete DNS A plex.peterstorm.io → 192.168.0.99']);
  });

  it('runs deletes first, then updates, then creates', () => {
    const have = [rec('A', 'old.peterstorm.io', '192.168.0.240'), rec('A', 'plex.peterstorm.io', '192.168.0.9')];
    const kinds = planDns(want, have).map((o) => o.kind).filter((k) => k !== 'noop');
    assert.deepEqual(kinds, ['delete', 'update', ...Array(8).fill('create')]);
  });

  it('recordDiff ignores the TTL of proxied records', () => {
    const d = want.records[0]!;
    assert.deepEqual(recordDiff(d, rec('CNAME', d.name, d.content, { proxied: true, ttl: 300 }), MARKER), []);
  });

  it('namesToLookUp: only names without an owned record of the wanted type', () => {
    const owned = converged(want)
      .filter((r) => r.name !== 'grafana.peterstorm.io')
      .map((r) => (r.name === 'argocd.peterstorm.io' ? { ...r, type: 'CNAME', content: 'x.example.net' } : r));
    assert.deepEqual(namesToLookUp(want, owned), ['grafana.peterstorm.io', 'argocd.peterstorm.io']);
    assert.deepEqual(namesToLookUp(want, converged(want)), []);
  });
});

describe('tunnel ingress', () => {
  it('one rule per external host, then the hostname-less catch-all', () => {
    const s = settings((x) => x.hosts.push({ name: 'status', access: 'external', service: 'http://uptime.monitoring.svc:3001' }));
    assert.deepEqual(desiredIngress(s), [
      { hostname: 'echo-server.peterstorm.io', service: 'http://cilium-ingress.kube-system.svc.cluster.local:80' },
      { hostname: 'status.peterstorm.io', service: 'http://uptime.monitoring.svc:3001' },
      { service: 'http_status:404' },
    ]);
    assert.deepEqual(desiredTunnel(s).secret, { namespace: 'cloudflared', name: 'tunnel-token', key: 'token' });
  });

  it('compares as the API returns: originRequest {} and hostname case are no difference', () => {
    const want = desiredIngress(settings());
    const have = [
      { hostname: 'Echo-Server.peterstorm.io', service: 'http://cilium-ingress.kube-system.svc.cluster.local:80', originRequest: {} },
      { service: 'http_status:404', originRequest: {} },
    ];
    assert.deepEqual(ingressDiff(want, have), []);
  });

  it('a missing catch-all, an extra rule or a dashboard originRequest tweak is drift', () => {
    const want = desiredIngress(settings());
    assert.deepEqual(ingressDiff(want, null).map((d) => d.path), ['$.config.ingress[0]', '$.config.ingress[1]']);
    assert.deepEqual(ingressDiff(want, [want[0]!]), [{ path: '$.config.ingress[1]', to: { service: 'http_status:404' } }]);
    const tweaked = [{ ...want[0]!, originRequest: { noTLSVerify: true } }, want[1]!];
    assert.equal(ingressDiff(want, tweaked).length, 1);
    assert.equal(ingressDiff(want, [...want, { service: 'http_status:503' }]).length, 1);
  });
});

describe('tunnel step changes', () => {
  const s = settings();
  const want = tunnelStep.want(s, {});
  const token = new Secret('eyJhIjoiMDEyMzQ1NiIsInQiOiJ0dW5uZWwtc2VjcmV0LXZhbHVlIn0=');
  const tunnel = { id: TUNNEL, name: 'homelab', createdAt: '2026-01-01T00:00:00Z', configSrc: 'cloudflare' as const, connectors: 2, status: 'healthy' };
  const apiIngress = want.ingress.map((r) => ({ ...r, originRequest: {} }));

  it('cold: create tunnel, ingress, namespace and Secret; the token never appears, the diff says [redacted]', () => {
    const have: TunnelHave = { tunnel: undefined, duplicates: [], others: [], config: null, token: undefined, secret: { known: true, exists: false, matches: false, namespaceExists: false } };
    const changes = tunnelStep.changes(want, have);
    assert.deepEqual(
      changes.map((c) => `${c.action} ${c.target}`),
      ['create Cloudflare tunnel homelab', 'create Cloudflare tunnel homelab ingress', 'create Namespace cloudflared', 'create Secret cloudflared/tunnel-token'],
    );
    assert.deepEqual(changes.at(-1)!.diff, [{ path: '$.data.token', to: '[redacted]' }]);
    assert.deepEqual(tunnelStep.outputs!(want, have), {});
  });

  it('converged: only noops, and the tunnel id is an output without writing', () => {
    const have: TunnelHave = { tunnel, duplicates: [], others: [], config: { ingress: apiIngress }, token, secret: { known: true, exists: true, matches: true, namespaceExists: true } };
    assert.ok(tunnelStep.changes(want, have).every((c) => c.action === 'noop'));
    assert.deepEqual(tunnelStep.outputs!(want, have), { tunnelId: TUNNEL });
  });

  it('a Secret with another token is an update that shows no token', () => {
    const have: TunnelHave = { tunnel, duplicates: [], others: [], config: { ingress: apiIngress }, token, secret: { known: true, exists: true, matches: false, namespaceExists: true } };
    const changes = tunnelStep.changes(want, have);
    const secret = changes.find((c) => c.target === 'Secret cloudflared/tunnel-token')!;
    assert.equal(secret.action, 'update');
    assert.deepEqual(secret.diff, [{ path: '$.data.token', from: '[redacted]', to: '[redacted]' }]);
    assert.ok(!JSON.stringify(changes).includes(token.reveal()));
  });

  it('cluster unreachable: the Secret is a wait, the Cloudflare part is still planned', () => {
    const have: TunnelHave = { tunnel: undefined, duplicates: [], others: [], config: null, token: undefined, secret: { known: false, error: 'connect ECONNREFUSED 127.0.0.1:6443' } };
    const changes = tunnelStep.changes(want, have);
    assert.deepEqual(changes.map((c) => c.action), ['create', 'create', 'wait']);
    assert.match(changes[2]!.detail ?? '', /ECONNREFUSED/);
  });

  it('a locally-managed tunnel of that name is a conflict', () => {
    const have: TunnelHave = { tunnel: { ...tunnel, configSrc: 'local' }, duplicates: [], others: [], config: null, token, secret: { known: true, exists: true, matches: true, namespaceExists: true } };
    const c = tunnelStep.changes(want, have)[0]!;
    assert.equal(c.action, 'conflict');
    assert.match(c.detail ?? '', /locally managed/);
  });

  it('steps: tunnel needs no other step (Cloudflare works without the cluster), dns needs tunnel; both only with a cloudflare section', () => {
    assert.deepEqual(tunnelStep.needs, []);
    assert.deepEqual(dnsStep.needs, ['tunnel']);
    const without = settings((x) => delete x.cloudflare);
    assert.equal(tunnelStep.enabled!(without), false);
    assert.equal(dnsStep.enabled!(without), false);
    assert.equal(dnsStep.enabled!(s), true);
  });
});

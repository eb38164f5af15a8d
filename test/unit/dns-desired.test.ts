// The pure halves of the dns and tunnel steps: desired records and ingress from settings, and
// the plan against what the zone holds. No I/O: every case is a table of records.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { parseSettings } from '../../src/settings/load.ts';
import type { Settings } from '../../src/settings/schema.ts';
import {
  desiredDns,
  dnsWarnings,
  externalDnsOwnerOf,
  opChange,
  ownedComment,
  ownership,
  planDns,
  recordDiff,
  strayLegacyNotes,
  type DnsOp,
  type DnsWant,
  type ExistingRecord,
} from '../../src/desired/dns.ts';
import { desiredIngress, desiredTunnel, ingressDiff } from '../../src/desired/tunnel.ts';
import { dnsStep } from '../../src/steps/dns.ts';
import { tunnelStep, type TunnelHave } from '../../src/steps/tunnel.ts';
import { RENDER_UPSTREAM } from '../../src/steps/types.ts';
import { Secret } from '../../src/secret.ts';

const LEGACY = 'managed-by=homelab-bootstrap';
const MARKER = `${LEGACY} owner=homelab`;
const ZONE = 'peterstorm.io';
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
  return want.zones.flatMap((z) => z.records).map((d) => rec(d.type, d.name, d.content, { proxied: d.proxied, ttl: d.proxied ? 1 : d.ttl, comment: d.comment }));
}

/** The plan against records of the default zone (and, by name, of any other zone the want has). */
function plan(want: DnsWant, have: ExistingRecord[]): DnsOp[] {
  return planDns(
    want,
    want.zones.map((z) => ({ zone: z.zone, records: have.filter((r) => r.name === z.zone || r.name.endsWith(`.${z.zone}`)) })),
  );
}
const records = (want: DnsWant) => want.zones.flatMap((z) => z.records);
const actions = (want: DnsWant, have: ExistingRecord[]) => plan(want, have).map(opChange).map((c) => `${c.action} ${c.target}`);
const Z = ` (zone ${ZONE})`;

describe('desired DNS records', () => {
  it("the example homelab gives SPEC.md's nine records, plus Hubble UI's", () => {
    const want = desiredDns(settings(), TUNNEL);
    assert.deepEqual(want.zones.map((z) => z.zone), [ZONE]);
    assert.equal(want.owner, 'homelab');
    assert.deepEqual(
      records(want).map((r) => [r.type, r.name, r.content, r.proxied, r.ttl, r.comment]),
      [
        ['CNAME', 'echo-server.peterstorm.io', `${TUNNEL}.cfargotunnel.com`, true, 1, MARKER],
        ['A', 'sonarr.peterstorm.io', '192.168.0.240', false, 1, MARKER],
        ['A', 'radarr.peterstorm.io', '192.168.0.240', false, 1, MARKER],
        ['A', 'prowlarr.peterstorm.io', '192.168.0.240', false, 1, MARKER],
        ['A', 'overseerr.peterstorm.io', '192.168.0.240', false, 1, MARKER],
        ['A', 'transmission.peterstorm.io', '192.168.0.240', false, 1, MARKER],
        ['A', 'plex.peterstorm.io', '192.168.0.241', false, 1, MARKER],
        ['A', 'grafana.peterstorm.io', '192.168.0.240', false, 1, MARKER],
        ['A', 'hubble.peterstorm.io', '192.168.0.240', false, 1, MARKER],
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
    assert.equal(records(want)[0]!.ttl, 1);
    assert.equal(records(want)[1]!.ttl, 300);
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
    assert.equal(records(want)[1]!.name, 'sonarr.peterstorm.io');
    assert.equal(records(want)[1]!.adopt, false);
    assert.equal(records(want)[2]!.adopt, true);
  });

  it('renders with the tunnel-id placeholder and contacts nothing', () => {
    const s = settings();
    const r = dnsStep.rendered(dnsStep.want(s, RENDER_UPSTREAM));
    assert.deepEqual(r.dns?.map((z) => z.zone), [ZONE]);
    assert.equal(r.dns?.[0]?.records[0]?.content, '<tunnel-id>.cfargotunnel.com');
    assert.equal(r.dns?.[0]?.records.length, 10);
    const t = tunnelStep.rendered(tunnelStep.want(s, RENDER_UPSTREAM));
    assert.deepEqual(t.tunnel, { name: 'homelab', ingress: [{ hostname: 'echo-server.peterstorm.io', service: 'http://cilium-ingress.kube-system.svc.cluster.local:80' }, { service: 'http_status:404' }] });
    assert.match(JSON.stringify(t.objects), /<token of Cloudflare tunnel homelab>/);
  });
});

describe('ownership marker', () => {
  it("is this owner's marker alone or followed by a separator and a note; the bare marker is an earlier version's; another owner's is theirs", () => {
    assert.deepEqual(ownership(MARKER, 'homelab'), { kind: 'mine', suffix: '' });
    assert.deepEqual(ownership(`${MARKER} (sonarr)`, 'homelab'), { kind: 'mine', suffix: ' (sonarr)' });
    assert.deepEqual(ownership(`${MARKER};note`, 'homelab'), { kind: 'mine', suffix: ';note' });
    assert.deepEqual(ownership(`${MARKER}2`, 'homelab'), { kind: 'other', owner: 'homelab2', suffix: '' });
    assert.deepEqual(ownership(`${LEGACY} owner=staging keep`, 'homelab'), { kind: 'other', owner: 'staging', suffix: ' keep' });
    assert.deepEqual(ownership(LEGACY, 'homelab'), { kind: 'legacy', suffix: '' });
    assert.deepEqual(ownership(`${LEGACY} my note`, 'homelab'), { kind: 'legacy', suffix: ' my note' });
    assert.deepEqual(ownership(`${LEGACY}per`, 'homelab'), { kind: 'none' });
    assert.deepEqual(ownership('by hand', 'homelab'), { kind: 'none' });
    assert.deepEqual(ownership(null, 'homelab'), { kind: 'none' });
    assert.deepEqual(ownership('', 'homelab'), { kind: 'none' });
  });

  it('the owner defaults to the tunnel name (made fit for a comment); cloudflare.ownerId overrides it', () => {
    assert.equal(desiredDns(settings((s) => (s.cloudflare.tunnelName = 'site-b')), TUNNEL).marker, `${LEGACY} owner=site-b`);
    assert.equal(desiredDns(settings((s) => (s.cloudflare.tunnelName = 'My Lab / 2')), TUNNEL).owner, 'My-Lab-2');
    assert.equal(desiredDns(settings((s) => (s.cloudflare.ownerId = 'staging')), TUNNEL).marker, `${LEGACY} owner=staging`);
    assert.throws(() => settings((s) => (s.cloudflare.ownerId = 'has space')), /\$\.cloudflare\.ownerId/);
  });

  it('a kept note follows the marker and is cut to the 100-character limit; the marker never is', () => {
    assert.equal(ownedComment(MARKER, ''), MARKER);
    assert.equal(ownedComment(MARKER, 'my NAS'), `${MARKER} my NAS`);
    assert.equal(ownedComment(MARKER, '; note'), `${MARKER}; note`);
    const long = ownedComment(MARKER, ` ${'x'.repeat(200)}`);
    assert.equal(long.length, 100);
    assert.ok(long.startsWith(`${MARKER} x`));
  });
});

describe('planDns', () => {
  const want = desiredDns(settings(), TUNNEL);

  it('an empty zone: a create per host', () => {
    const ops = plan(want, []);
    assert.deepEqual(
      ops.map((o) => o.kind),
      Array(10).fill('create'),
    );
  });

  it('a converged zone: only noops, so nothing flaps', () => {
    assert.ok(plan(want, converged(want)).every((o) => o.kind === 'noop'));
  });

  it('compares as the API returns: proxied reads back TTL 1, CNAME content in any case with a trailing dot, a note after the marker', () => {
    const w = desiredDns(settings((s) => (s.hosts[0].ttl = 600)), TUNNEL);
    const have = converged(w).map((r) => (r.type === 'CNAME' ? { ...r, content: `${TUNNEL.toUpperCase()}.CFARGOTUNNEL.COM.`, ttl: 1, comment: `${MARKER} by the daemon` } : r));
    assert.ok(plan(w, have).every((o) => o.kind === 'noop'));
  });

  it('a changed target or TTL is an update with field diffs', () => {
    const have = converged(want).map((r) => (r.name === 'plex.peterstorm.io' ? { ...r, content: '192.168.0.242', ttl: 300 } : r));
    const ops = plan(want, have).filter((o) => o.kind !== 'noop');
    assert.equal(ops.length, 1);
    const c = opChange(ops[0]!);
    assert.equal(c.action, 'update');
    assert.equal(c.target, `DNS A plex.peterstorm.io${Z}`);
    assert.deepEqual(c.diff, [
      { path: '$.content', from: '192.168.0.242', to: '192.168.0.241' },
      { path: '$.ttl', from: 300, to: 1 },
    ]);
  });

  it('an unowned record on a wanted name is a conflict; nothing on that name is touched', () => {
    const have = [rec('A', 'sonarr.peterstorm.io', '192.168.0.10', { comment: null })];
    const ops = plan(want, have);
    const conflict = ops.find((o) => o.kind === 'conflict');
    assert.ok(conflict && conflict.kind === 'conflict');
    assert.equal(conflict.record.name, 'sonarr.peterstorm.io');
    assert.match(conflict.detail, /already has A sonarr\.peterstorm\.io → 192\.168\.0\.10, not created by homelab-bootstrap.*adopt/);
    assert.ok(!ops.some((o) => (o.kind === 'update' || o.kind === 'delete') && (o.kind === 'delete' ? o.existing : o.existing).id === have[0]!.id));
    assert.equal(ops.filter((o) => o.kind === 'create').length, 9);
  });

  it('an identical unowned record is still a conflict without adopt', () => {
    const have = [rec('A', 'sonarr.peterstorm.io', '192.168.0.240', { comment: 'made by hand' })];
    assert.ok(actions(want, have).includes(`conflict DNS A sonarr.peterstorm.io${Z}`));
  });

  it('adopt takes over an identical or a differing unowned record by writing it (marker included)', () => {
    const w = desiredDns(settings((s) => (s.hosts[1].adopt = true)), TUNNEL);
    for (const content of ['192.168.0.240', '192.168.0.10']) {
      const have = [rec('A', 'sonarr.peterstorm.io', content, { comment: null })];
      const op = plan(w, have).find((o) => o.kind === 'update');
      assert.ok(op && op.kind === 'update');
      assert.equal(op.takeOver, 'adopt');
      assert.equal(op.existing.id, have[0]!.id);
      assert.deepEqual(op.diff.at(-1), { path: '$.comment', to: MARKER });
      assert.equal(op.write.comment, MARKER);
      assert.match(opChange(op).detail ?? '', /adopt/);
    }
  });

  it('adopt of an unowned CNAME where an A is wanted: delete it, then create the A', () => {
    const w = desiredDns(settings((s) => (s.cloudflare.adopt = true)), TUNNEL);
    const have = [rec('CNAME', 'sonarr.peterstorm.io', 'nas.example.net', { comment: null })];
    const a = actions(w, have);
    assert.ok(a.indexOf(`delete DNS CNAME sonarr.peterstorm.io → nas.example.net${Z}`) < a.indexOf(`create DNS A sonarr.peterstorm.io${Z}`));
  });

  it('TXT, MX and CAA may share a name with a wanted A or CNAME (the apex carries mail records): created beside them, never touched', () => {
    const w = desiredDns(settings((s) => s.hosts.push({ name: '@', access: 'external' })), TUNNEL);
    const sharing = [
      rec('TXT', 'sonarr.peterstorm.io', 'v=spf1 -all', { comment: null }),
      rec('TXT', 'echo-server.peterstorm.io', 'hello', { comment: null }),
      rec('CAA', 'echo-server.peterstorm.io', '0 issue "letsencrypt.org"', { comment: null }),
      rec('MX', ZONE, 'mail.example.net', { comment: null }),
      rec('TXT', ZONE, 'v=spf1 include:_spf.example.net -all', { comment: null }),
      rec('NS', ZONE, 'ada.ns.cloudflare.com', { comment: null }),
    ];
    const a = actions(w, sharing).filter((x) => !x.startsWith('noop'));
    assert.ok(a.includes(`create DNS A sonarr.peterstorm.io${Z}`));
    assert.ok(a.includes(`create DNS CNAME echo-server.peterstorm.io${Z}`));
    assert.ok(a.includes(`create DNS CNAME peterstorm.io${Z}`), 'the apex CNAME (Cloudflare flattens it)');
    assert.equal(a.length, records(w).length);
    assert.ok(a.every((x) => x.startsWith('create')));
  });

  it('any unowned A, AAAA, CNAME or NS on a wanted name is a conflict, also beside an owned record (a second A is DNS round-robin)', () => {
    const cases: Array<[ExistingRecord, RegExp]> = [
      [rec('A', 'plex.peterstorm.io', '192.168.0.99', { comment: null }), /adopt/],
      [rec('AAAA', 'plex.peterstorm.io', '2001:db8::1', { comment: 'v6 by hand' }), /adopt/],
      [rec('NS', 'plex.peterstorm.io', 'ns1.example.net', { comment: null }), /delegated/],
    ];
    for (const [extra, how] of cases) {
      const have = [...converged(want), extra];
      const ops = plan(want, have).filter((o) => o.kind !== 'noop');
      assert.equal(ops.length, 1, `${extra.type}: ${ops.map((o) => o.kind).join()}`);
      const op = ops[0]!;
      assert.ok(op.kind === 'conflict');
      assert.deepEqual(op.existing, [extra]);
      assert.match(op.detail, new RegExp(`plex\\.peterstorm\\.io already has ${extra.type} plex\\.peterstorm\\.io → ${extra.content.replace(/\./g, '\\.')}, not created by homelab-bootstrap`));
      assert.match(op.detail, how);
    }
  });

  it("another install's records are never touched: not pruned, not adopted, a conflict when they stand on a wanted name", () => {
    const w = desiredDns(settings((s) => (s.cloudflare.adopt = true)), TUNNEL);
    const theirs = [
      rec('A', 'staging.peterstorm.io', '192.168.1.240', { comment: `${LEGACY} owner=staging` }),
      rec('A', 'sonarr.peterstorm.io', '192.168.1.240', { comment: `${LEGACY} owner=staging` }),
    ];
    const ops = plan(w, [...converged(w).filter((r) => r.name !== 'sonarr.peterstorm.io'), ...theirs]).filter((o) => o.kind !== 'noop');
    assert.equal(ops.length, 1);
    assert.ok(ops[0]!.kind === 'conflict');
    assert.match(ops[0]!.detail, /owned by another homelab-bootstrap install \(owner=staging\).*give this host another name/);
  });

  it("records of the bare marker (before owner ids) are taken over in place on this install's names: a comment update, the note kept, nothing deleted", () => {
    const have: ExistingRecord[] = converged(want).map((r) => ({ ...r, comment: r.name.startsWith('plex.') ? `${LEGACY} (LAN VIP of Plex)` : LEGACY }));
    have.push(rec('A', 'old.peterstorm.io', '192.168.0.240', { comment: LEGACY }));
    const ops = plan(want, have);
    const updates = ops.filter((o) => o.kind === 'update');
    assert.equal(updates.length, records(want).length);
    for (const u of updates) {
      assert.ok(u.kind === 'update');
      assert.equal(u.takeOver, 'legacy');
      assert.deepEqual(u.diff.map((d) => d.path), ['$.comment']);
      assert.equal(u.write.comment, u.record.name.startsWith('plex.') ? `${MARKER} (LAN VIP of Plex)` : MARKER);
    }
    assert.deepEqual(ops.filter((o) => o.kind === 'delete'), [], 'old.peterstorm.io is not this install\'s name: not deleted');
    assert.match(opChange(updates[0]!).detail!, /earlier version/);
  });

  it("a bare-marker record on a name this install does not want may be another install's: never deleted or changed, reported with what to do", () => {
    const stray = rec('A', 'old.peterstorm.io', '192.168.0.240', { comment: `${LEGACY} (staging box)` });
    const have = [...converged(want), stray, rec('A', 'gone.peterstorm.io', '192.168.0.240')];
    const ops = plan(want, have).filter((o) => o.kind !== 'noop');
    assert.deepEqual(ops.map(opChange).map((c) => `${c.action} ${c.target}`), [`delete DNS A gone.peterstorm.io → 192.168.0.240${Z}`], "this owner's removed host is still pruned");
    const notes = strayLegacyNotes(want, [{ zone: ZONE, records: have }]);
    assert.equal(notes.length, 1);
    assert.match(notes[0]!, /^DNS A old\.peterstorm\.io → 192\.168\.0\.240 \(zone peterstorm\.io\) carries the marker of a homelab-bootstrap version before owner ids .*not one of this install's hosts: left alone.*delete it by hand/);
    assert.deepEqual(strayLegacyNotes(want, [{ zone: ZONE, records: converged(want) }]), [], 'nothing to say about a converged zone');
  });

  it("an update keeps what a person wrote after the marker", () => {
    const have = converged(want).map((r) => (r.name === 'plex.peterstorm.io' ? { ...r, content: '192.168.0.242', comment: `${MARKER} - Plex LB, ask Anna` } : r));
    const op = plan(want, have).find((o) => o.kind === 'update');
    assert.ok(op && op.kind === 'update');
    assert.deepEqual(op.diff, [{ path: '$.content', from: '192.168.0.242', to: '192.168.0.241' }]);
    assert.equal(op.write.comment, `${MARKER} - Plex LB, ask Anna`);
  });

  it('a hand-made CNAME that already points at this tunnel is taken over without adopt; one pointing elsewhere is a conflict', () => {
    const mine = [rec('CNAME', 'echo-server.peterstorm.io', `${TUNNEL}.cfargotunnel.com.`, { proxied: true, comment: 'made in the dashboard' })];
    const op = plan(want, mine).find((o) => o.kind !== 'delete' && o.record.name === 'echo-server.peterstorm.io');
    assert.ok(op && op.kind === 'update', op?.kind);
    assert.equal(op.takeOver, 'tunnel');
    assert.deepEqual(op.diff, [{ path: '$.comment', from: 'made in the dashboard', to: `${MARKER} made in the dashboard` }]);
    assert.match(opChange(op).detail!, /already points at this tunnel/);
    const elsewhere = [rec('CNAME', 'echo-server.peterstorm.io', 'other-tunnel.cfargotunnel.com', { proxied: true, comment: null })];
    assert.equal(plan(want, elsewhere).find((o) => o.kind !== 'delete' && o.record.name === 'echo-server.peterstorm.io')?.kind, 'conflict');
    // Without the tunnel id (the tunnel step failed) nothing can be said to point at it.
    const unknown = desiredDns(settings(), undefined);
    assert.equal(plan(unknown, mine).find((o) => o.kind !== 'delete' && o.record.name === 'echo-server.peterstorm.io')?.kind, 'conflict');
  });

  it('a host removed from settings: its owned record is deleted, unowned records elsewhere are not', () => {
    const have = [...converged(want), rec('A', 'old.peterstorm.io', '192.168.0.240'), rec('A', 'nas.peterstorm.io', '192.168.0.10', { comment: 'by hand' })];
    const changes = plan(want, have).map(opChange).filter((c) => c.action !== 'noop');
    assert.deepEqual(changes, [{ action: 'delete', target: `DNS A old.peterstorm.io → 192.168.0.240${Z}`, detail: 'owned by homelab-bootstrap and its host is no longer in hosts' }]);
  });

  it('a type change (local → external) is delete, then create', () => {
    const w = desiredDns(settings((s) => (s.hosts[1] = { name: 'sonarr', access: 'external' })), TUNNEL);
    const have = converged(want);
    const a = actions(w, have).filter((x) => !x.startsWith('noop'));
    assert.deepEqual(a, [`delete DNS A sonarr.peterstorm.io → 192.168.0.240${Z}`, `create DNS CNAME sonarr.peterstorm.io${Z}`]);
    const del = plan(w, have).find((o) => o.kind === 'delete');
    assert.match(del && del.kind === 'delete' ? del.reason : '', /type change/);
  });

  it('two owned records of one name: the matching one is kept, the other deleted', () => {
    const have = [...converged(want), rec('A', 'plex.peterstorm.io', '192.168.0.99')];
    assert.deepEqual(actions(want, have).filter((x) => !x.startsWith('noop')), [`delete DNS A plex.peterstorm.io → 192.168.0.99${Z}`]);
  });

  it('runs deletes first, then updates, then creates', () => {
    const have = [rec('A', 'old.peterstorm.io', '192.168.0.240'), rec('A', 'plex.peterstorm.io', '192.168.0.9')];
    const kinds = plan(want, have).map((o) => o.kind).filter((k) => k !== 'noop');
    assert.deepEqual(kinds, ['delete', 'update', ...Array(records(want).length - 1).fill('create')]);
  });

  it('recordDiff ignores the TTL of proxied records', () => {
    const d = records(want)[0]!;
    assert.deepEqual(recordDiff(d, rec('CNAME', d.name, d.content, { proxied: true, ttl: 300 }), MARKER, { kind: 'mine', suffix: '' }), []);
  });
});

describe('more than one zone', () => {
  const SECOND = 'storm.example';
  const two = () =>
    settings((s) => {
      s.hosts.push({ name: '@', zone: SECOND, access: 'external' }, { name: 'www', zone: SECOND, access: 'external' }, { name: `nas.${SECOND}`, zone: SECOND, access: 'local' });
    });

  it('a host names its zone; names are relative to it, "@" is its apex; the default zone comes first and keeps cloudflare.zoneId', () => {
    const s = two();
    s.cloudflare!.zoneId = 'f'.repeat(32);
    const want = desiredDns(s, TUNNEL);
    assert.deepEqual(
      want.zones.map((z) => [z.zone, z.zoneId, z.records.map((r) => `${r.type} ${r.name}`)]),
      [
        [ZONE, 'f'.repeat(32), records(desiredDns(settings(), TUNNEL)).map((r) => `${r.type} ${r.name}`)],
        [SECOND, undefined, [`CNAME ${SECOND}`, `CNAME www.${SECOND}`, `A nas.${SECOND}`]],
      ],
    );
    const r = dnsStep.rendered(dnsStep.want(s, RENDER_UPSTREAM));
    assert.deepEqual(r.dns?.map((z) => [z.zone, z.records.length]), [[ZONE, 10], [SECOND, 3]]);
    const t = tunnelStep.rendered(tunnelStep.want(s, RENDER_UPSTREAM));
    assert.deepEqual(t.tunnel?.ingress.map((i) => i.hostname), ['echo-server.peterstorm.io', SECOND, `www.${SECOND}`, undefined]);
  });

  it('each zone is planned on its own records with the same ownership rules, and every change names its zone', () => {
    const want = desiredDns(two(), TUNNEL);
    const have = [...converged(want).filter((r) => r.name !== `www.${SECOND}`), rec('A', `old.${SECOND}`, '192.168.0.240'), rec('A', `www.${SECOND}`, '192.168.0.10', { comment: null })];
    assert.deepEqual(actions(want, have).filter((x) => !x.startsWith('noop')), [
      `delete DNS A old.${SECOND} → 192.168.0.240 (zone ${SECOND})`,
      `conflict DNS CNAME www.${SECOND} (zone ${SECOND})`,
    ]);
  });

  it('a name outside its zone is refused with the field named', () => {
    assert.throws(() => settings((s) => s.hosts.push({ name: 'www.elsewhere.org', zone: SECOND, access: 'external' })), /\$\.hosts\[10\]\.name: got "www\.elsewhere\.org"; expected a label \("sonarr"\) or a name ending in \.storm\.example/);
  });
});

describe('names deeper than one level', () => {
  it('warn for external hosts only, naming the host and the zone', () => {
    const s = settings((x) => x.hosts.push({ name: 'a.b.peterstorm.io', access: 'external' }, { name: 'x.y.peterstorm.io', access: 'local' }, { name: 'deep.sub.storm.example', zone: 'storm.example', access: 'external' }));
    const w = dnsWarnings(s);
    assert.equal(w.length, 2);
    assert.match(w[0]!, /^\$\.hosts\[10\] \(a\.b\.peterstorm\.io\): 2 levels below the zone peterstorm\.io; Cloudflare's free Universal SSL certificate covers only peterstorm\.io and \*\.peterstorm\.io.*a-b\.peterstorm\.io/);
    assert.match(w[1]!, /^\$\.hosts\[12\] \(deep\.sub\.storm\.example\)/);
    assert.deepEqual(dnsWarnings(settings()), []);
  });
});

describe('external-dns registry records on adopted names', () => {
  const registry = (owner: string) => `"heritage=external-dns,external-dns/owner=${owner},external-dns/resource=ingress/media/sonarr"`;

  it('reads the owner of an external-dns TXT, quoted or not', () => {
    assert.equal(externalDnsOwnerOf(registry('homelab')), 'homelab');
    assert.equal(externalDnsOwnerOf(registry('homelab').slice(1, -1)), 'homelab');
    assert.equal(externalDnsOwnerOf('v=spf1 -all'), undefined);
    assert.equal(externalDnsOwnerOf('"heritage=other,external-dns/owner=homelab"'), undefined);
  });

  it("adopt deletes the named owner's registry TXT (beside the name or as a-/cname- prefixed) and keeps everyone else's; the record itself is updated in place", () => {
    const w = desiredDns(
      settings((s) => {
        s.cloudflare.adopt = true;
        s.cloudflare.adoptExternalDnsOwner = 'homelab';
      }),
      TUNNEL,
    );
    const sonarr = rec('A', 'sonarr.peterstorm.io', '192.168.0.242', { comment: null });
    const echo = rec('CNAME', 'echo-server.peterstorm.io', 'old.example.net', { proxied: true, comment: null });
    const gone = [rec('TXT', 'sonarr.peterstorm.io', registry('homelab'), { comment: null }), rec('TXT', 'a-sonarr.peterstorm.io', registry('homelab'), { comment: null }), rec('TXT', 'cname-echo-server.peterstorm.io', registry('homelab'), { comment: null })];
    const kept = [
      rec('TXT', 'radarr.peterstorm.io', registry('someone-else'), { comment: null }),
      rec('TXT', 'sonarr.peterstorm.io', 'v=spf1 -all', { comment: null }),
      rec('TXT', 'a-nas.peterstorm.io', registry('homelab'), { comment: null }), // not an adopted name
    ];
    const ops = plan(w, [...converged(w).filter((r) => !/^(sonarr|echo-server)\./.test(r.name)), sonarr, echo, ...gone, ...kept]);
    const deleted = ops.filter((o) => o.kind === 'delete').map((o) => (o.kind === 'delete' ? o.existing.id : ''));
    assert.deepEqual(deleted.sort(), gone.map((r) => r.id).sort());
    const updated = ops.filter((o) => o.kind === 'update').map((o) => (o.kind === 'update' ? o.existing.id : ''));
    assert.deepEqual(updated.sort(), [sonarr.id, echo.id].sort());
    assert.ok(!ops.some((o) => o.kind === 'create'), 'adoption is in place, never delete + create');
    // Without the setting, registry records stay.
    const plain = desiredDns(settings((s) => (s.cloudflare.adopt = true)), TUNNEL);
    assert.ok(!plan(plain, [sonarr, ...gone]).some((o) => o.kind === 'delete'));
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

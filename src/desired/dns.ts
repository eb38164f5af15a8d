// Pure: the DNS records the settings ask for, zone by zone, and the plan that takes each zone
// there without ever touching a record the daemon did not write. Ownership is a comment marker
// (tags do not exist on the Free plan) that names this install, so several installs can share
// a zone; a record without it is someone else's.
import { DEFAULTS, OWNER_ID, type Settings } from '../settings/schema.ts';
import { hostFqdn } from '../settings/names.ts';
import type { Change, DnsRecordSpec, FieldDiff, RenderedZone } from '../steps/types.ts';

export const TUNNEL_CNAME_SUFFIX = '.cfargotunnel.com';
/** Cloudflare's limit for a record comment on the Free plan. */
export const COMMENT_LIMIT = 100;
/** Every install's marker starts so; alone (no owner id) it is what versions before owner ids wrote. */
export const MARKER_BASE: string = DEFAULTS.ownerComment;

export interface DesiredRecord extends DnsRecordSpec {
  /** Take over an unowned record of this name (host.adopt, else cloudflare.adopt). */
  adopt: boolean;
}

export interface ZoneWant {
  zone: string;
  /** cloudflare.zoneId, for the default zone: saves the zone lookup. */
  zoneId?: string;
  records: DesiredRecord[];
}

export interface DnsWant {
  owner: string;
  marker: string;
  /** Undefined until the tunnel step has produced it; external records then carry a placeholder. */
  tunnelId: string | undefined;
  /** cloudflare.adoptExternalDnsOwner: external-dns registry TXT records of this owner go on adopted names. */
  externalDnsOwner: string | undefined;
  /** The default zone first (always read, so records of removed hosts are pruned), then the others hosts name. */
  zones: ZoneWant[];
}

/** A record as listed from the zone (names lowercase, CNAME content without trailing dot). */
export interface ExistingRecord {
  id: string;
  type: string;
  name: string;
  content: string;
  proxied: boolean;
  ttl: number;
  comment: string | null;
}

export interface ZoneRecords {
  zone: string;
  records: readonly ExistingRecord[];
}

/** Why an update writes a record the daemon does not own yet under this owner. */
export type TakeOver = 'adopt' | 'tunnel' | 'legacy';

export type DnsOp =
  | { kind: 'delete'; zone: string; existing: ExistingRecord; reason: string }
  | { kind: 'update'; zone: string; record: DesiredRecord; write: DnsRecordSpec; existing: ExistingRecord; diff: FieldDiff[]; takeOver?: TakeOver }
  | { kind: 'create'; zone: string; record: DesiredRecord; diff: FieldDiff[] }
  | { kind: 'noop'; zone: string; record: DesiredRecord; existing: ExistingRecord }
  | { kind: 'conflict'; zone: string; record: DesiredRecord; existing: ExistingRecord[]; detail: string };

const ADDRESS_TYPES = new Set(['A', 'AAAA', 'CNAME']);
// What Cloudflare refuses beside a CNAME (and what makes a wanted A ambiguous: round-robin,
// another address family, a delegation). TXT, MX, CAA and the rest may share any name.
const NAME_EXCLUSIVE = new Set(['A', 'AAAA', 'CNAME', 'NS']);
const SEPARATOR = /^[\s;,|]/;

export const normName = (n: string): string => n.toLowerCase().replace(/\.$/, '');
export const normContent = (type: string, content: string): string => (type === 'CNAME' ? content.toLowerCase().replace(/\.$/, '') : content);
/** Cloudflare serves proxied records with automatic TTL and reads them back as 1. */
export const effectiveTtl = (r: { proxied: boolean; ttl: number }): number => (r.proxied ? 1 : r.ttl);

export const ownerMarker = (owner: string): string => `${MARKER_BASE} owner=${owner}`;

/** cloudflare.ownerId, else the tunnel name (stable across reboots and reinstalls), made fit for a comment. */
export function ownerIdOf(cf: NonNullable<Settings['cloudflare']>): string {
  if (cf.ownerId) return cf.ownerId;
  if (OWNER_ID.test(cf.tunnelName)) return cf.tunnelName;
  return cf.tunnelName.replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 40) || 'homelab';
}

/**
 * Whose record this is, read from its comment: this install's (`mine`), an earlier version's
 * without an owner id (`legacy`: taken over in place on this install's names, left alone and
 * reported elsewhere, see strayLegacy), another install's (`other`), or
 * nobody's known (`none`). `suffix` is what follows the marker (a person's note, with its
 * separator); a longer word such as "managed-by=homelab-bootstrapper" is no marker.
 */
export type Ownership = { kind: 'mine' | 'legacy'; suffix: string } | { kind: 'other'; owner: string; suffix: string } | { kind: 'none' };

export function ownership(comment: string | null | undefined, owner: string): Ownership {
  if (!comment || !comment.startsWith(MARKER_BASE)) return { kind: 'none' };
  const rest = comment.slice(MARKER_BASE.length);
  if (rest !== '' && !SEPARATOR.test(rest)) return { kind: 'none' };
  const m = /^ owner=([A-Za-z0-9._-]+)(.*)$/s.exec(rest);
  if (m && (m[2] === '' || SEPARATOR.test(m[2]!))) {
    return m[1] === owner ? { kind: 'mine', suffix: m[2]! } : { kind: 'other', owner: m[1]!, suffix: m[2]! };
  }
  return { kind: 'legacy', suffix: rest };
}

const isOurs = (o: Ownership): boolean => o.kind === 'mine' || o.kind === 'legacy';

/**
 * A bare-marker record on a name this install does not want: every install wrote that marker
 * before owner ids, so it may be another install's still (two installs on one zone). Deleting
 * it would take that install's record away; it is reported instead, and never touched.
 */
const isStrayLegacy = (r: ExistingRecord, o: Ownership, wanted: ReadonlySet<string>): boolean => o.kind === 'legacy' && !wanted.has(r.name);

/** The marker, then what a person wrote (kept on every write); the note is cut to fit, never the marker. */
export function ownedComment(marker: string, note: string): string {
  if (note.trim() === '') return marker;
  const tail = SEPARATOR.test(note) ? note : ` ${note}`;
  return (marker + tail).slice(0, COMMENT_LIMIT).trimEnd();
}

/** The comment to write on an existing record this run keeps or takes over. */
function commentFor(marker: string, have: ExistingRecord, o: Ownership): string {
  return ownedComment(marker, o.kind === 'mine' || o.kind === 'legacy' ? o.suffix : (have.comment ?? ''));
}

export function tunnelTarget(tunnelId: string | undefined): string {
  return `${tunnelId ?? '<tunnel-id>'}${TUNNEL_CNAME_SUFFIX}`;
}

/** The zone a host's record lives in: its own `zone`, else cloudflare.zone, else `domain`. */
export function hostZone(host: { zone?: string | undefined }, settings: Settings): string {
  return normName(host.zone ?? settings.cloudflare?.zone ?? settings.domain);
}

export function desiredDns(settings: Settings, tunnelId: string | undefined): DnsWant {
  const cf = settings.cloudflare;
  if (!cf) throw new Error('DNS needs the cloudflare section of the settings');
  const owner = ownerIdOf(cf);
  const marker = ownerMarker(owner);
  if (marker.length > COMMENT_LIMIT) throw new Error(`the ownership marker is longer than Cloudflare's ${COMMENT_LIMIT}-character comment limit`);
  const defaultZone = hostZone({}, settings);
  const zones = new Map<string, ZoneWant>([[defaultZone, { zone: defaultZone, ...(cf.zoneId ? { zoneId: cf.zoneId } : {}), records: [] }]]);
  for (const h of settings.hosts) {
    const zone = hostZone(h, settings);
    const name = hostFqdn(h, settings.domain);
    if (name !== zone && !name.endsWith(`.${zone}`)) throw new Error(`host ${name} is outside the zone ${zone}`);
    const adopt = h.adopt ?? cf.adopt;
    const record: DesiredRecord =
      h.access === 'external'
        ? { type: 'CNAME', name, content: tunnelTarget(tunnelId), proxied: true, ttl: 1, comment: marker, adopt }
        : { type: 'A', name, content: h.ip ?? settings.network.ingressIP, proxied: false, ttl: h.ttl ?? 1, comment: marker, adopt };
    if (!zones.has(zone)) zones.set(zone, { zone, records: [] });
    zones.get(zone)!.records.push(record);
  }
  return { owner, marker, tunnelId, externalDnsOwner: cf.adoptExternalDnsOwner, zones: [...zones.values()] };
}

/**
 * Cloudflare's free Universal SSL certificate covers the zone and one level below it
 * (`*.example.org`); an external host deeper than that fails TLS at the edge, silently.
 */
export function dnsWarnings(settings: Settings): string[] {
  if (!settings.cloudflare) return [];
  const out: string[] = [];
  settings.hosts.forEach((h, i) => {
    if (h.access !== 'external') return;
    const zone = hostZone(h, settings);
    const name = hostFqdn(h, settings.domain);
    const below = name === zone ? [] : name.slice(0, -(zone.length + 1)).split('.');
    if (below.length <= 1) return;
    out.push(
      `$.hosts[${i}] (${name}): ${below.length} levels below the zone ${zone}; Cloudflare's free Universal SSL certificate covers only ${zone} and *.${zone}, so HTTPS to this external host fails at the edge. Use a one-level name such as ${below.join('-')}.${zone}, or order an Advanced Certificate for it`,
    );
  });
  return out;
}

export function spec(r: DesiredRecord, comment = r.comment): DnsRecordSpec {
  return { type: r.type, name: r.name, content: r.content, proxied: r.proxied, ttl: r.ttl, comment };
}

/** Field differences of a same-type record, compared the way the API returns it. */
export function recordDiff(want: DesiredRecord, have: ExistingRecord, marker: string, o: Ownership): FieldDiff[] {
  const d: FieldDiff[] = [];
  const wc = normContent(want.type, want.content);
  const hc = normContent(have.type, have.content);
  if (wc !== hc) d.push({ path: '$.content', from: hc, to: wc });
  if (want.proxied !== have.proxied) d.push({ path: '$.proxied', from: have.proxied, to: want.proxied });
  if (effectiveTtl(want) !== effectiveTtl(have)) d.push({ path: '$.ttl', from: effectiveTtl(have), to: effectiveTtl(want) });
  if (o.kind !== 'mine') d.push({ path: '$.comment', ...(have.comment !== null ? { from: have.comment } : {}), to: commentFor(marker, have, o) });
  return d;
}

function describe(r: ExistingRecord, o: Ownership): string {
  const whose = o.kind === 'other' ? `owned by another homelab-bootstrap install (owner=${o.owner})` : 'not created by homelab-bootstrap';
  return `${r.type} ${r.name} → ${r.content}${r.proxied ? ' (proxied)' : ''}, ${whose}`;
}

/** external-dns' registry record: `"heritage=external-dns,external-dns/owner=<owner>,..."`. */
export function externalDnsOwnerOf(content: string): string | undefined {
  const fields = new Map(
    content
      .replace(/^"|"$/g, '')
      .split(',')
      .map((kv) => {
        const i = kv.indexOf('=');
        return [kv.slice(0, i).trim(), kv.slice(i + 1).trim()] as const;
      }),
  );
  return fields.get('heritage') === 'external-dns' ? fields.get('external-dns/owner') : undefined;
}

/** Where external-dns keeps the registry record of `name`: beside it (old format) or as `<type>-<name>` (new format). */
const registryNames = (name: string): string[] => [name, ...['a', 'aaaa', 'cname'].map((t) => `${t}-${name}`)];

/**
 * The plan for one zone, in the order it must run: deletes (prunes, the first half of a type
 * change, external-dns leftovers), then updates, then creates; noops and conflicts last.
 */
function planZone(want: DnsWant, zoneWant: ZoneWant, existing: readonly ExistingRecord[]): DnsOp[] {
  const { marker, owner } = want;
  const zone = zoneWant.zone;
  const whose = new Map(existing.map((r) => [r.id, ownership(r.comment, owner)]));
  const of = (r: ExistingRecord) => whose.get(r.id)!;
  const ours = (r: ExistingRecord) => isOurs(of(r));
  const byName = new Map<string, ExistingRecord[]>();
  for (const r of existing) byName.set(r.name, [...(byName.get(r.name) ?? []), r]);
  const used = new Set<string>();
  const ops: DnsOp[] = [];

  for (const d of zoneWant.records) {
    const onName = byName.get(d.name) ?? [];
    // The zone's own NS records sit at the apex and stand in nobody's way.
    const blocking = onName.filter((r) => !ours(r) && NAME_EXCLUSIVE.has(r.type) && !(r.type === 'NS' && r.name === zone));
    // A hand-made CNAME to this very tunnel is already right: take it over, adopt or not.
    const toThisTunnel = (r: ExistingRecord) => d.type === 'CNAME' && want.tunnelId !== undefined && r.type === 'CNAME' && normContent('CNAME', r.content) === normContent('CNAME', d.content);
    const takeable = blocking.filter((r) => of(r).kind === 'none' && ADDRESS_TYPES.has(r.type) && (d.adopt || toThisTunnel(r)));
    if (takeable.length < blocking.length) {
      // Leave the whole name alone, owned records included: nothing here is safe to change.
      onName.forEach((r) => used.add(r.id));
      const left = blocking.filter((r) => !takeable.includes(r));
      const others = left.map((r) => describe(r, of(r))).join('; ');
      const how = left.some((r) => of(r).kind === 'other')
        ? 'another install owns that name: give this host another name, or remove it from the other install\'s hosts'
        : left.some((r) => r.type === 'NS')
          ? 'the name is delegated (NS): remove the NS records or give this host another name'
          : d.adopt
            ? 'adopt takes over only A, AAAA and CNAME records; remove the others by hand'
            : 'delete it in the Cloudflare dashboard, or set "adopt": true on this host (or cloudflare.adopt) to take it over';
      ops.push({ kind: 'conflict', zone, record: d, existing: left, detail: `${d.name} already has ${others}; the ${d.type} record was not written; ${how}` });
      continue;
    }
    const candidates = [...onName.filter((r) => ours(r) && r.type === d.type), ...takeable.filter((r) => r.type === d.type)];
    const pick = candidates.find((r) => recordDiff(d, r, marker, of(r)).length === 0) ?? candidates.find(ours) ?? candidates[0];
    if (pick) {
      used.add(pick.id);
      const o = of(pick);
      const diff = recordDiff(d, pick, marker, o);
      if (diff.length === 0) ops.push({ kind: 'noop', zone, record: d, existing: pick });
      else {
        const takeOver: TakeOver | undefined = o.kind === 'legacy' ? 'legacy' : o.kind === 'none' ? (toThisTunnel(pick) && !d.adopt ? 'tunnel' : 'adopt') : undefined;
        ops.push({ kind: 'update', zone, record: d, write: spec(d, commentFor(marker, pick, o)), existing: pick, diff, ...(takeOver ? { takeOver } : {}) });
      }
    } else {
      ops.push({
        kind: 'create',
        zone,
        record: d,
        diff: [
          { path: '$.content', to: d.content },
          { path: '$.proxied', to: d.proxied },
          { path: '$.ttl', to: effectiveTtl(d) },
          { path: '$.comment', to: d.comment },
        ],
      });
    }
    for (const r of takeable) {
      if (r === pick) continue;
      used.add(r.id);
      ops.push({ kind: 'delete', zone, existing: r, reason: `adopted (adopt: true): replaced by the ${d.type} record` });
    }
    if (d.adopt && want.externalDnsOwner !== undefined) {
      for (const n of registryNames(d.name)) {
        for (const r of byName.get(n) ?? []) {
          if (r.type !== 'TXT' || used.has(r.id) || externalDnsOwnerOf(r.content) !== want.externalDnsOwner) continue;
          used.add(r.id);
          ops.push({ kind: 'delete', zone, existing: r, reason: `external-dns registry record of owner ${want.externalDnsOwner} on an adopted name (cloudflare.adoptExternalDnsOwner)` });
        }
      }
    }
  }

  const wanted = new Map(zoneWant.records.map((d) => [d.name, d]));
  const wantedNames = new Set(wanted.keys());
  for (const r of existing) {
    if (!ours(r) || used.has(r.id) || isStrayLegacy(r, of(r), wantedNames)) continue;
    const d = wanted.get(r.name);
    const reason = !d
      ? 'owned by homelab-bootstrap and its host is no longer in hosts'
      : d.type !== r.type
        ? `type change: replaced by a ${d.type} record`
        : 'duplicate of the owned record kept for this name';
    ops.push({ kind: 'delete', zone, existing: r, reason });
  }
  return ops;
}

/** One line for plan, the log and status per bare-marker record this install leaves alone (see isStrayLegacy). */
export function strayLegacyNotes(want: DnsWant, have: readonly ZoneRecords[]): string[] {
  return want.zones.flatMap((z) => {
    const wanted = new Set(z.records.map((d) => d.name));
    const records = have.find((h) => h.zone === z.zone)?.records ?? [];
    return records
      .filter((r) => isStrayLegacy(r, ownership(r.comment, want.owner), wanted))
      .map(
        (r) =>
          `DNS ${r.type} ${r.name} → ${r.content} (zone ${z.zone}) carries the marker of a homelab-bootstrap version before owner ids ("${MARKER_BASE}" without owner=) ` +
          `and is not one of this install's hosts: left alone, since another install sharing the zone may still use it (it takes the record over when it upgrades); ` +
          `if no other install uses it, delete it by hand in the Cloudflare dashboard`,
      );
  });
}

const PHASE: Record<DnsOp['kind'], number> = { delete: 0, update: 1, create: 2, noop: 3, conflict: 3 };

/** The plan for every zone: all deletes first (a type change frees its name), then updates, then creates. */
export function planDns(want: DnsWant, have: readonly ZoneRecords[]): DnsOp[] {
  const ops = want.zones.flatMap((z) => planZone(want, z, have.find((h) => h.zone === z.zone)?.records ?? []));
  return ops.sort((a, b) => PHASE[a.kind] - PHASE[b.kind] || opTarget(a).localeCompare(opTarget(b)));
}

function opTarget(op: DnsOp): string {
  if (op.kind === 'delete') return `DNS ${op.existing.type} ${op.existing.name} → ${op.existing.content} (zone ${op.zone})`;
  return `DNS ${op.record.type} ${op.record.name} (zone ${op.zone})`;
}

const TAKE_OVER: Record<TakeOver, string> = {
  adopt: 'taking over a record homelab-bootstrap did not create (adopt: true)',
  tunnel: 'taking over a hand-made CNAME that already points at this tunnel',
  legacy: 'taking over in place a record marked by an earlier version (no owner id)',
};

export function opChange(op: DnsOp): Change {
  const target = opTarget(op);
  switch (op.kind) {
    case 'delete':
      return { action: 'delete', target, detail: op.reason };
    case 'update':
      return { action: 'update', target, diff: op.diff, ...(op.takeOver ? { detail: TAKE_OVER[op.takeOver] } : {}) };
    case 'create':
      return { action: 'create', target, diff: op.diff };
    case 'noop':
      return { action: 'noop', target };
    case 'conflict':
      return { action: 'conflict', target, detail: op.detail };
  }
}

export const changeKey = (c: Change): string => `${c.action} ${c.target}`;

export function renderedZones(want: DnsWant): RenderedZone[] {
  return want.zones.map((z) => ({ zone: z.zone, records: z.records.map((r) => spec(r)) }));
}

// Pure: the DNS records the settings ask for, and the plan that takes the zone there without
// ever touching a record the daemon did not write. Ownership is a comment marker (tags do not
// exist on the Free plan); a record without it is someone else's.
import { DEFAULTS, type Settings } from '../settings/schema.ts';
import { fqdn } from '../settings/names.ts';
import type { Change, DnsRecordSpec, FieldDiff } from '../steps/types.ts';

export const TUNNEL_CNAME_SUFFIX = '.cfargotunnel.com';
/** Cloudflare's limit for a record comment on the Free plan. */
export const COMMENT_LIMIT = 100;

export interface DesiredRecord extends DnsRecordSpec {
  /** Take over an unowned record of this name (host.adopt, else cloudflare.adopt). */
  adopt: boolean;
}

export interface DnsWant {
  zone: string;
  marker: string;
  /** Undefined until the tunnel step has produced it; external records then carry a placeholder. */
  tunnelId: string | undefined;
  records: DesiredRecord[];
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

export type DnsOp =
  | { kind: 'delete'; existing: ExistingRecord; reason: string }
  | { kind: 'update'; record: DesiredRecord; existing: ExistingRecord; diff: FieldDiff[]; adopted: boolean }
  | { kind: 'create'; record: DesiredRecord; diff: FieldDiff[] }
  | { kind: 'noop'; record: DesiredRecord; existing: ExistingRecord }
  | { kind: 'conflict'; record: DesiredRecord; existing: ExistingRecord[]; detail: string };

const ADDRESS_TYPES = new Set(['A', 'AAAA', 'CNAME']);

export const normName = (n: string): string => n.toLowerCase().replace(/\.$/, '');
export const normContent = (type: string, content: string): string => (type === 'CNAME' ? content.toLowerCase().replace(/\.$/, '') : content);
/** Cloudflare serves proxied records with automatic TTL and reads them back as 1. */
export const effectiveTtl = (r: { proxied: boolean; ttl: number }): number => (r.proxied ? 1 : r.ttl);

/**
 * Owned = the comment is the marker, or starts with it followed by a separator (so a person
 * may append a note). A longer word such as "managed-by=homelab-bootstrapper" is not ours.
 */
export function isOwned(comment: string | null | undefined, marker: string): boolean {
  if (!comment || !comment.startsWith(marker)) return false;
  const next = comment.charAt(marker.length);
  return next === '' || /[\s;,|]/.test(next);
}

export function tunnelTarget(tunnelId: string | undefined): string {
  return `${tunnelId ?? '<tunnel-id>'}${TUNNEL_CNAME_SUFFIX}`;
}

export function desiredDns(settings: Settings, tunnelId: string | undefined): DnsWant {
  const cf = settings.cloudflare;
  if (!cf) throw new Error('DNS needs the cloudflare section of the settings');
  const zone = normName(cf.zone ?? settings.domain);
  const marker = DEFAULTS.ownerComment;
  if (marker.length > COMMENT_LIMIT) throw new Error(`the ownership marker is longer than Cloudflare's ${COMMENT_LIMIT}-character comment limit`);
  const records = settings.hosts.map((h): DesiredRecord => {
    const name = fqdn(h.name, settings.domain);
    if (name !== zone && !name.endsWith(`.${zone}`)) throw new Error(`host ${name} is outside the zone ${zone}`);
    const adopt = h.adopt ?? cf.adopt;
    if (h.access === 'external') {
      return { type: 'CNAME', name, content: tunnelTarget(tunnelId), proxied: true, ttl: 1, comment: marker, adopt };
    }
    return { type: 'A', name, content: h.ip ?? settings.network.ingressIP, proxied: false, ttl: h.ttl ?? 1, comment: marker, adopt };
  });
  return { zone, marker, tunnelId, records };
}

export function spec(r: DesiredRecord): DnsRecordSpec {
  return { type: r.type, name: r.name, content: r.content, proxied: r.proxied, ttl: r.ttl, comment: r.comment };
}

/** Field differences of a same-type record, compared the way the API returns it. */
export function recordDiff(want: DesiredRecord, have: ExistingRecord, marker: string): FieldDiff[] {
  const d: FieldDiff[] = [];
  const wc = normContent(want.type, want.content);
  const hc = normContent(have.type, have.content);
  if (wc !== hc) d.push({ path: '$.content', from: hc, to: wc });
  if (want.proxied !== have.proxied) d.push({ path: '$.proxied', from: have.proxied, to: want.proxied });
  if (effectiveTtl(want) !== effectiveTtl(have)) d.push({ path: '$.ttl', from: effectiveTtl(have), to: effectiveTtl(want) });
  if (!isOwned(have.comment, marker)) d.push({ path: '$.comment', ...(have.comment !== null ? { from: have.comment } : {}), to: want.comment });
  return d;
}

/** Whether an existing record of type `existing` on the name stands in the way of `wanted`. */
function blocks(wanted: string, existing: string): boolean {
  // A CNAME cannot share its name with anything; a second A would make DNS round-robin.
  if (wanted === 'CNAME') return true;
  return existing === 'CNAME' || existing === wanted;
}

/** Names whose full record set must be read: those without an owned record of the wanted type. */
export function namesToLookUp(want: DnsWant, owned: readonly ExistingRecord[]): string[] {
  return want.records
    .filter((d) => !owned.some((r) => r.name === d.name && r.type === d.type && isOwned(r.comment, want.marker)))
    .map((d) => d.name);
}

function describe(r: ExistingRecord): string {
  return `${r.type} ${r.name} → ${r.content}${r.proxied ? ' (proxied)' : ''}`;
}

/**
 * The plan, in the order it must run: deletes (prunes, and the first half of a type change),
 * then updates, then creates; noops and conflicts last.
 */
export function planDns(want: DnsWant, existing: readonly ExistingRecord[]): DnsOp[] {
  const marker = want.marker;
  const owned = (r: ExistingRecord) => isOwned(r.comment, marker);
  const byName = new Map<string, ExistingRecord[]>();
  for (const r of existing) byName.set(r.name, [...(byName.get(r.name) ?? []), r]);
  const used = new Set<string>();
  const deletes: DnsOp[] = [];
  const updates: DnsOp[] = [];
  const creates: DnsOp[] = [];
  const rest: DnsOp[] = [];

  for (const d of want.records) {
    const onName = byName.get(d.name) ?? [];
    const blocking = onName.filter((r) => !owned(r) && blocks(d.type, r.type));
    const takeable = blocking.filter((r) => ADDRESS_TYPES.has(r.type));
    if (blocking.length > 0 && (!d.adopt || takeable.length < blocking.length)) {
      // Leave the whole name alone, owned records included: nothing here is safe to change.
      onName.forEach((r) => used.add(r.id));
      const others = blocking.map(describe).join(', ');
      const how = !d.adopt
        ? `set "adopt": true on this host (or cloudflare.adopt) to take it over`
        : `adopt takes over only A, AAAA and CNAME records; remove the others by hand`;
      rest.push({
        kind: 'conflict',
        record: d,
        existing: blocking,
        detail: `${d.name} already has ${others}, not created by homelab-bootstrap (no "${marker}" comment); the ${d.type} record was not written; ${how}`,
      });
      continue;
    }
    const candidates = [...onName.filter((r) => owned(r) && r.type === d.type), ...(d.adopt ? takeable.filter((r) => r.type === d.type) : [])];
    const pick = candidates.find((r) => recordDiff(d, r, marker).length === 0) ?? candidates.find(owned) ?? candidates[0];
    if (pick) {
      used.add(pick.id);
      const diff = recordDiff(d, pick, marker);
      if (diff.length === 0) rest.push({ kind: 'noop', record: d, existing: pick });
      else updates.push({ kind: 'update', record: d, existing: pick, diff, adopted: !owned(pick) });
    } else {
      creates.push({
        kind: 'create',
        record: d,
        diff: [
          { path: '$.content', to: d.content },
          { path: '$.proxied', to: d.proxied },
          { path: '$.ttl', to: effectiveTtl(d) },
          { path: '$.comment', to: d.comment },
        ],
      });
    }
    if (d.adopt) {
      for (const r of takeable) {
        if (r === pick) continue;
        used.add(r.id);
        deletes.push({ kind: 'delete', existing: r, reason: `adopted (adopt: true): replaced by the ${d.type} record` });
      }
    }
  }

  const wanted = new Map(want.records.map((d) => [d.name, d]));
  for (const r of existing) {
    if (!owned(r) || used.has(r.id)) continue;
    const d = wanted.get(r.name);
    const reason = !d
      ? 'owned by homelab-bootstrap and its host is no longer in hosts'
      : d.type !== r.type
        ? `type change: replaced by a ${d.type} record`
        : 'duplicate of the owned record kept for this name';
    deletes.push({ kind: 'delete', existing: r, reason });
  }
  const byTarget = (a: DnsOp, b: DnsOp) => opTarget(a).localeCompare(opTarget(b));
  return [...deletes.sort(byTarget), ...updates.sort(byTarget), ...creates.sort(byTarget), ...rest.sort(byTarget)];
}

function opTarget(op: DnsOp): string {
  if (op.kind === 'delete') return `DNS ${op.existing.type} ${op.existing.name} → ${op.existing.content}`;
  return `DNS ${op.record.type} ${op.record.name}`;
}

export function opChange(op: DnsOp): Change {
  const target = opTarget(op);
  switch (op.kind) {
    case 'delete':
      return { action: 'delete', target, detail: op.reason };
    case 'update':
      return { action: 'update', target, diff: op.diff, ...(op.adopted ? { detail: 'taking over a record homelab-bootstrap did not create (adopt: true)' } : {}) };
    case 'create':
      return { action: 'create', target, diff: op.diff };
    case 'noop':
      return { action: 'noop', target };
    case 'conflict':
      return { action: 'conflict', target, detail: op.detail };
  }
}

export const changeKey = (c: Change): string => `${c.action} ${c.target}`;

export function renderedRecords(want: DnsWant): DnsRecordSpec[] {
  return want.records.map(spec);
}

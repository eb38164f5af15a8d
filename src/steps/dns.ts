// The zone's records for `hosts`: external hosts as proxied CNAMEs to the tunnel, local hosts
// as A records on the LAN. Records without the ownership comment are never changed; a wanted
// record that collides with one is a conflict, reported per host while the others are written.
import type { Change, Step } from './types.ts';
import { CloudflarePermissionError } from '../adapters/cloudflare.ts';
import { isTransient } from '../engine/errors.ts';
import {
  changeKey,
  desiredDns,
  namesToLookUp,
  opChange,
  planDns,
  renderedRecords,
  spec,
  type DnsOp,
  type DnsWant,
  type ExistingRecord,
} from '../desired/dns.ts';

export interface DnsHave {
  zoneId: string;
  /** Owned records of the zone, plus every record on the names that needed a look. */
  records: ExistingRecord[];
  lookedUp: string[];
}

const message = (e: unknown): string => (e instanceof Error ? e.message : String(e));

function opName(op: DnsOp): string {
  return op.kind === 'delete' ? op.existing.name : op.record.name;
}

export const dnsStep: Step<DnsWant, DnsHave> = {
  name: 'dns',
  needs: ['tunnel'],
  enabled: (settings) => settings.cloudflare !== undefined,

  want: (settings, upstream) => desiredDns(settings, typeof upstream.tunnelId === 'string' ? upstream.tunnelId : undefined),

  async have(ctx, want) {
    const cf = ctx.adapters.cloudflare;
    const zone = await cf.findZone(ctx.signal);
    // One filtered list finds everything the daemon owns; only names it does not yet own in
    // the wanted type are read in full, to see what it would collide with. A run with
    // nothing to do therefore costs one list call.
    const owned = await cf.listRecords(zone.id, { commentStartsWith: want.marker }, ctx.signal);
    const names = namesToLookUp(want, owned);
    const byId = new Map(owned.map((r) => [r.id, r]));
    for (const name of names) {
      for (const r of await cf.listRecords(zone.id, { name }, ctx.signal)) byId.set(r.id, r);
    }
    return { zoneId: zone.id, records: [...byId.values()], lookedUp: names };
  },

  changes: (want, have) => planDns(want, have.records).map(opChange),

  async change(ctx, changes: Change[], want, have) {
    const cf = ctx.adapters.cloudflare;
    const requested = new Set(changes.map(changeKey));
    const ops = planDns(want, have.records).filter((op) => requested.has(changeKey(opChange(op))));
    // Without the tunnel id a CNAME would point at a placeholder: leave those names untouched.
    const noTunnel = new Set(want.tunnelId ? [] : want.records.filter((r) => r.type === 'CNAME').map((r) => r.name));
    const problems: string[] = [];
    for (const name of noTunnel) problems.push(`${name}: not written, the tunnel id is unknown (the tunnel step produced none)`);

    for (const op of ops) {
      if (op.kind === 'noop' || noTunnel.has(opName(op))) continue;
      if (op.kind === 'conflict') {
        ctx.log.error({ record: `${op.record.type} ${op.record.name}` }, `conflict: ${op.detail}`);
        problems.push(`${op.record.name}: conflict: ${op.detail}`);
        continue;
      }
      try {
        if (op.kind === 'delete') {
          await cf.deleteRecord(have.zoneId, op.existing, ctx.signal);
          ctx.log.info({ record: `${op.existing.type} ${op.existing.name}` }, `deleted DNS ${op.existing.type} ${op.existing.name} → ${op.existing.content} (${op.reason})`);
        } else if (op.kind === 'update') {
          await cf.updateRecord(have.zoneId, op.existing.id, spec(op.record), ctx.signal);
          ctx.log.info({ record: `${op.record.type} ${op.record.name}`, diff: op.diff }, `updated DNS ${op.record.type} ${op.record.name}${op.adopted ? ' (adopted)' : ''}`);
        } else {
          await cf.createRecord(have.zoneId, spec(op.record), ctx.signal);
          ctx.log.info({ record: `${op.record.type} ${op.record.name}` }, `created DNS ${op.record.type} ${op.record.name} → ${op.record.content}`);
        }
      } catch (e) {
        // Worth a retry of the whole step (or hopeless for every record): stop here.
        if (isTransient(e) || e instanceof CloudflarePermissionError || ctx.signal.aborted) throw e;
        ctx.log.error({ record: opName(op), err: message(e) }, `DNS ${opName(op)}: ${message(e)}`);
        problems.push(`${opName(op)}: ${message(e)}`);
      }
    }
    if (problems.length > 0) {
      throw new Error(`${problems.length} DNS record${problems.length === 1 ? '' : 's'} not reconciled (all others are in place): ${problems.join('; ')}`);
    }
  },

  rendered: (want) => ({ dns: { zone: want.zone, records: renderedRecords(want) } }),
};

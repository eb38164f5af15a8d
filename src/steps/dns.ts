// The records for `hosts`, in every zone they name: external hosts as proxied CNAMEs to the
// tunnel, local hosts as A records on the LAN. Records without this install's ownership comment
// are never changed; a wanted record that collides with one is a conflict, reported per host
// while the others are written. A run whose only outcome is such conflicts writes nothing and
// ends as 'conflict' (its own exit code), not as a failure.
import type { Change, Step } from './types.ts';
import { CloudflarePermissionError } from '../adapters/cloudflare.ts';
import { ConflictError, isTransient } from '../engine/errors.ts';
import { changeKey, desiredDns, dnsWarnings, opChange, planDns, renderedZones, spec, strayLegacyNotes, type DnsOp, type DnsWant, type ExistingRecord } from '../desired/dns.ts';

export interface ZoneHave {
  zone: string;
  zoneId: string;
  /** Every record of the zone: one list shows what the daemon owns and what stands in its way. */
  records: ExistingRecord[];
}

export interface DnsHave {
  zones: ZoneHave[];
}

const message = (e: unknown): string => (e instanceof Error ? e.message : String(e));

function opName(op: DnsOp): string {
  return op.kind === 'delete' ? op.existing.name : op.record.name;
}

/** The record's name and zone, for the step's summary line (names of two zones may look alike). */
const named = (name: string, zone: string): string => `${name} (zone ${zone})`;

export const dnsStep: Step<DnsWant, DnsHave> = {
  name: 'dns',
  needs: ['tunnel'],
  enabled: (settings) => settings.cloudflare !== undefined,

  want: (settings, upstream) => desiredDns(settings, typeof upstream.tunnelId === 'string' ? upstream.tunnelId : undefined),

  async have(ctx, want) {
    const cf = ctx.adapters.cloudflare;
    for (const w of dnsWarnings(ctx.settings)) ctx.log.warn(w);
    // One list per zone (a homelab zone fits one page); the zone id is looked up only when
    // it is not configured. A run with nothing to do therefore costs one call per zone.
    const zones: ZoneHave[] = [];
    for (const z of want.zones) {
      const zoneId = z.zoneId ?? (await cf.findZone(z.zone, ctx.signal)).id;
      zones.push({ zone: z.zone, zoneId, records: await cf.listRecords(zoneId, {}, ctx.signal) });
    }
    for (const n of strayLegacyNotes(want, zones)) ctx.log.warn(n);
    return { zones };
  },

  changes: (want, have) => planDns(want, have.zones).map(opChange),

  async change(ctx, changes: Change[], want, have) {
    const cf = ctx.adapters.cloudflare;
    const requested = new Set(changes.map(changeKey));
    const ops = planDns(want, have.zones).filter((op) => requested.has(changeKey(opChange(op))));
    const zoneId = (zone: string) => have.zones.find((z) => z.zone === zone)!.zoneId;
    // Without the tunnel id a CNAME would point at a placeholder: leave those names untouched.
    const cnames = want.tunnelId ? [] : want.zones.flatMap((z) => z.records.filter((r) => r.type === 'CNAME').map((r) => ({ name: r.name, zone: z.zone })));
    const noTunnel = new Set(cnames.map((r) => r.name));
    const problems: string[] = [];
    const conflicts: string[] = [];
    for (const r of cnames) problems.push(`${named(r.name, r.zone)}: not written, the tunnel id is unknown (the tunnel step produced none)`);

    for (const op of ops) {
      if (op.kind === 'noop' || noTunnel.has(opName(op))) continue;
      if (op.kind === 'conflict') {
        ctx.log.error({ record: `${op.record.type} ${op.record.name}`, zone: op.zone }, `conflict: ${op.detail}`);
        conflicts.push(`${named(op.record.name, op.zone)}: conflict: ${op.detail}`);
        continue;
      }
      try {
        if (op.kind === 'delete') {
          await cf.deleteRecord(zoneId(op.zone), op.existing, ctx.signal);
          ctx.log.info({ record: `${op.existing.type} ${op.existing.name}`, zone: op.zone }, `deleted DNS ${op.existing.type} ${op.existing.name} → ${op.existing.content} (${op.reason})`);
        } else if (op.kind === 'update') {
          await cf.updateRecord(zoneId(op.zone), op.existing.id, op.write, ctx.signal);
          ctx.log.info({ record: `${op.record.type} ${op.record.name}`, zone: op.zone, diff: op.diff }, `updated DNS ${op.record.type} ${op.record.name}${op.takeOver ? ` (taken over: ${op.takeOver})` : ''}`);
        } else {
          await cf.createRecord(zoneId(op.zone), spec(op.record), ctx.signal);
          ctx.log.info({ record: `${op.record.type} ${op.record.name}`, zone: op.zone }, `created DNS ${op.record.type} ${op.record.name} → ${op.record.content}`);
        }
      } catch (e) {
        // Worth a retry of the whole step (or hopeless for every record): stop here.
        if (isTransient(e) || e instanceof CloudflarePermissionError || ctx.signal.aborted) throw e;
        ctx.log.error({ record: opName(op), zone: op.zone, err: message(e) }, `DNS ${named(opName(op), op.zone)}: ${message(e)}`);
        problems.push(`${named(opName(op), op.zone)}: ${message(e)}`);
      }
    }
    const all = [...problems, ...conflicts];
    const n = all.length;
    if (problems.length > 0) throw new Error(`${n} DNS record${n === 1 ? '' : 's'} not reconciled (all others are in place): ${all.join('; ')}`);
    if (conflicts.length > 0) {
      throw new ConflictError(`${n} DNS record${n === 1 ? '' : 's'} not written because of a conflict (all others are in place): ${conflicts.join('; ')}`);
    }
  },

  notes: (want, have) => strayLegacyNotes(want, have.zones),

  rendered: (want) => ({ dns: renderedZones(want) }),
};

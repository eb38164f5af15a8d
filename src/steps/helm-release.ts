// The shared want/have/changes/change of one Helm release, so cilium.ts and argocd.ts only say
// which chart, which values and what "ready" means.
//
// The rules (DESIGN.md, Helm):
// - no new revision on a no-op boot, and no helm process either: what is deployed is read from
//   Helm's own release records (adapters/helm-storage.ts) and a local chart's Chart.yaml
//   (adapters/chart-meta.ts); skip when the chart (name-version) and the user-supplied values
//   equal the desired ones and the release is deployed. helm runs only to write;
// - a killed helm leaves the release pending-*, and every later helm write fails with "another
//   operation is in progress": roll back to the last revision that was deployed, or uninstall a
//   release that never was, then install/upgrade as usual;
// - objects the chart installs that exist with no Helm ownership at all (an Argo CD once
//   installed from manifests) are taken over (--take-ownership); another release's never are;
// - a step may refuse an upgrade (Cilium: one minor at a time); the release stays as it is and
//   what needs it goes on;
// - never `helm --wait` (it hangs without nodes): readiness is rollout.ts, a separate change.
import { isDeepStrictEqual } from 'node:util';
import type { Settings } from '../settings/schema.ts';
import { applyConflicts, chartLabel, HelmError, ownershipConflict, type HelmWriteOptions } from '../adapters/helm.ts';
import { ConflictError } from '../engine/errors.ts';
import { readChartMeta, type ChartMeta } from '../adapters/chart-meta.ts';
import { readReleaseHistory } from '../adapters/helm-storage.ts';
import { valuesDigest } from '../adapters/release-memo.ts';
import type { JsonObject } from '../desired/merge.ts';
import { diffObjects } from '../diff.ts';
import type { Change, HelmReleaseSpec, Outputs, Rendered, Step, StepContext, StepName } from './types.ts';
import { readWorkloads, refLabel, waitForRollout, type WorkloadRef, type WorkloadState } from './rollout.ts';

export interface ReleaseWant {
  release: HelmReleaseSpec;
  /** Workloads that must be ready before the step is done; empty = no readiness wait. */
  rollout: WorkloadRef[];
}

/** What is deployed once any recovery is done: the base the desired state is compared with. */
export interface DeployedRelease {
  revision: number;
  status: string;
  chart: ChartMeta;
  values: JsonObject;
}

export type Recovery =
  | { kind: 'rollback'; status: string; revision: number; toRevision: number }
  | { kind: 'uninstall'; status: string; revision: number };

export interface ReleaseHave {
  /** The desired chart's name and version (a local chart's are read from its Chart.yaml). */
  chart: ChartMeta;
  deployed?: DeployedRelease;
  recovery?: Recovery;
  workloads: WorkloadState[];
}

/** Statuses a killed helm leaves behind; helm refuses every write while the last one has one. */
export const PENDING_STATUSES = ['pending-install', 'pending-upgrade', 'pending-rollback', 'uninstalling'];
/** Revisions a rollback can return to: they were running when a later operation began. */
const ROLLBACK_TARGETS = ['deployed', 'superseded'];

export interface HelmStepConfig {
  name: StepName;
  needs: readonly StepName[];
  release(settings: Settings): HelmReleaseSpec;
  /** The readiness wait; [] switches it off. */
  rollout?(settings: Settings): WorkloadRef[];
  /** Bound of one attempt of the step (engine timeout). */
  timeoutMs: number;
  /** helm's --timeout for hooks and rollbacks. */
  helmTimeoutMs: number;
  rolloutTimeoutMs: number;
  pollMs: number;
  /** Why upgrading the deployed chart to the desired one is unsafe (and what to do instead), if it is. */
  refuseUpgrade?: UpgradeGuard;
}

/** Pure: a reason to refuse moving a release from one chart to another, or undefined. */
export type UpgradeGuard = (deployed: ChartMeta, desired: ChartMeta) => string | undefined;

const releaseTarget = (r: HelmReleaseSpec) => `HelmRelease ${r.namespace}/${r.name}`;
const chartString = (c: ChartMeta) => `${c.name}-${c.version}`;
/** Desired values as helm stores them: JSON round trip (no undefined, plain numbers). */
const normalised = (v: JsonObject): JsonObject => JSON.parse(JSON.stringify(v)) as JsonObject;

type Op =
  | { kind: 'rollback'; toRevision: number }
  | { kind: 'uninstall' }
  | { kind: 'install' }
  | { kind: 'upgrade' }
  | { kind: 'refuse'; reason: string }
  | { kind: 'wait' };

interface PlannedOp {
  op: Op;
  change: Change;
}

/** Pure: the operations, in order, that bring `have` to `want`. */
export function planRelease(want: ReleaseWant, have: ReleaseHave, refuseUpgrade?: UpgradeGuard): PlannedOp[] {
  const r = want.release;
  const target = releaseTarget(r);
  const ops: PlannedOp[] = [];
  const rec = have.recovery;
  if (rec?.kind === 'rollback') {
    ops.push({
      op: { kind: 'rollback', toRevision: rec.toRevision },
      change: {
        action: 'update',
        target,
        detail: `revision ${rec.revision} is stuck in ${rec.status} (an interrupted helm run); roll back to revision ${rec.toRevision}`,
      },
    });
  } else if (rec?.kind === 'uninstall') {
    ops.push({
      op: { kind: 'uninstall' },
      change: {
        action: 'delete',
        target,
        detail: `revision ${rec.revision} is stuck in ${rec.status} and no revision was ever deployed; uninstall it to install again`,
      },
    });
  }

  const desiredChart = chartString(have.chart);
  const d = have.deployed;
  let releaseWritten = false;
  if (!d) {
    ops.push({
      op: { kind: 'install' },
      change: { action: 'create', target, detail: `install ${desiredChart} (${chartLabel(r.chart)})` },
    });
    releaseWritten = true;
  } else {
    const deployedChart = chartString(d.chart);
    const diff = [
      ...(deployedChart === desiredChart ? [] : [{ path: '$.chart', from: deployedChart, to: desiredChart }]),
      // Wrapped so the paths read $.values.hubble.relay.enabled next to $.chart.
      ...diffObjects({ values: d.values }, { values: normalised(r.values) }),
    ];
    const failed = d.status !== 'deployed';
    const refusal = diff.length > 0 || failed ? refuseUpgrade?.(d.chart, have.chart) : undefined;
    if (refusal) {
      // The release stays as it is; what needs it goes on against the deployed version.
      ops.push({ op: { kind: 'refuse', reason: refusal }, change: { action: 'conflict', target, diff, detail: refusal } });
    } else if (diff.length > 0 || failed) {
      const why = failed ? `revision ${d.revision} is ${d.status}; upgrade again` : `upgrade from revision ${d.revision}`;
      ops.push({ op: { kind: 'upgrade' }, change: { action: 'update', target, diff, detail: `${why} (${desiredChart})` } });
      releaseWritten = true;
    }
  }

  // After a write the pods roll, so wait even if they looked ready before it.
  for (const ref of want.rollout) {
    const state = have.workloads.find((w) => isDeepStrictEqual(w.ref, ref));
    if (!releaseWritten && state?.readiness.ready) continue;
    ops.push({
      op: { kind: 'wait' },
      change: { action: 'wait', target: refLabel(ref), detail: `wait until ready (now: ${state?.readiness.summary ?? 'unknown'})` },
    });
  }
  return ops;
}

async function readRelease(ctx: StepContext, want: ReleaseWant): Promise<ReleaseHave> {
  const r = want.release;
  const chart: ChartMeta = 'path' in r.chart ? readChartMeta(r.chart.path) : { name: r.chart.chart, version: r.chart.version };
  const workloads = want.rollout.length > 0 ? await readWorkloads(ctx, want.rollout) : [];
  // Helm's own records, read without running helm: a no-op boot starts no helm process.
  const history = await readReleaseHistory(ctx.adapters.kube, r.name, r.namespace, ctx.adapters.releaseMemo);
  const top = history[0];
  if (!top) return { chart, workloads };
  // A no-op boot decodes no record: this very Secret was read before, and its values were these.
  const seen = top.remembered();
  const desiredValues = normalised(r.values);
  if (seen && seen.status !== 'uninstalled' && !PENDING_STATUSES.includes(seen.status) && seen.valuesDigest === valuesDigest(desiredValues)) {
    return { chart, workloads, deployed: { revision: seen.revision, status: seen.status, chart: seen.chart, values: desiredValues } };
  }
  const latest = await top.decode();
  // `helm uninstall --keep-history` leaves an uninstalled record; install treats it as absent.
  if (latest.status === 'uninstalled') return { chart, workloads };

  if (!PENDING_STATUSES.includes(latest.status)) {
    return { chart, workloads, deployed: { revision: latest.revision, status: latest.status, chart: latest.chart, values: latest.values as JsonObject } };
  }

  // helm keeps each record's status label in step with the record; decode only the target.
  const back = await history.find((h) => h.revision < latest.revision && ROLLBACK_TARGETS.includes(h.status))?.decode();
  if (!back || latest.status === 'uninstalling') {
    return { chart, workloads, recovery: { kind: 'uninstall', status: latest.status, revision: latest.revision } };
  }
  return {
    chart,
    workloads,
    recovery: { kind: 'rollback', status: latest.status, revision: latest.revision, toRevision: back.revision },
    // A rollback deploys the old revision's chart and values as a new revision.
    deployed: { revision: latest.revision + 1, status: 'deployed', chart: back.chart, values: back.values as JsonObject },
  };
}

/**
 * `helm upgrade --install`, answering the two refusals that only the owner of the release can
 * settle, each at most once:
 * - objects the chart installs that exist with no Helm ownership at all (left by manifests, e.g.
 *   an Argo CD installed with `kubectl apply`): helm refuses them, `--take-ownership` adopts
 *   them. An object another release owns is never taken: that is for the user to settle;
 * - Helm 4 applies server-side, and a field of the release's objects that another manager
 *   changed since (`kubectl edit`) is a conflict: the release owns it, so `--force-conflicts`
 *   takes it back, as Helm 3's three-way merge does anyway. The log names the managers.
 */
async function upgradeInstall(ctx: StepContext, r: HelmReleaseSpec, opts: HelmWriteOptions): Promise<void> {
  const { helm } = ctx.adapters;
  const flags: Pick<HelmWriteOptions, 'takeOwnership' | 'forceConflicts'> = {};
  for (;;) {
    try {
      await helm.upgradeInstall(r, { ...opts, ...flags });
      return;
    } catch (err) {
      if (!(err instanceof HelmError)) throw err;
      const owned = ownershipConflict(err.stderr);
      const fields = applyConflicts(err.stderr);
      if (owned && !flags.takeOwnership) {
        if (owned.owner) {
          const owner = `${owned.owner.namespace ?? r.namespace}/${owned.owner.name ?? r.name}`;
          throw new Error(
            `${releaseTarget(r)}: ${owned.object} belongs to Helm release ${owner}; uninstall that release (or remove the object) so ${r.namespace}/${r.name} can install it`,
            { cause: err },
          );
        }
        // --take-ownership skips helm's check for every object, and helm names only the first
        // it refused: make sure no other object of the chart belongs to another release.
        const foreign = await ownedElsewhere(ctx, r);
        if (foreign.length > 0) {
          throw new Error(
            `${releaseTarget(r)}: ${owned.object} exists without Helm ownership, but ${foreign.slice(0, 5).join(', ')}${foreign.length > 5 ? ` and ${foreign.length - 5} more` : ''} belong to other Helm releases; uninstall those (or remove the objects) so ${r.namespace}/${r.name} can take the rest over`,
            { cause: err },
          );
        }
        ctx.log.warn({ object: owned.object }, `${owned.object} exists without Helm ownership (left by an earlier install); taking it over into ${releaseTarget(r)}`);
        flags.takeOwnership = true;
      } else if (fields && !flags.forceConflicts) {
        ctx.log.warn({ managers: fields }, `${releaseTarget(r)}: ${fields.join(', ') || 'another field manager'} changed fields of the release's objects; taking them back`);
        flags.forceConflicts = true;
      } else {
        throw err;
      }
    }
  }
}

/**
 * The other Helm release an object's ownership annotations name (a missing one reads as this
 * release's), or undefined: helm refuses to adopt such an object, and so does the bootstrap.
 */
export function otherReleaseOwner(
  annotations: Readonly<Record<string, string>> | undefined,
  r: { name: string; namespace: string },
): { name: string; namespace: string } | undefined {
  const name = annotations?.['meta.helm.sh/release-name'] ?? r.name;
  const namespace = annotations?.['meta.helm.sh/release-namespace'] ?? r.namespace;
  return name === r.name && namespace === r.namespace ? undefined : { name, namespace };
}

/** The chart's objects that exist and carry another release's Helm ownership, readable. */
async function ownedElsewhere(ctx: StepContext, r: HelmReleaseSpec): Promise<string[]> {
  const objects = await ctx.adapters.helm.template(r, ctx.signal);
  const found: string[] = [];
  for (const o of objects) {
    const have = await ctx.adapters.kube.get(o.apiVersion, o.kind, o.name, o.namespace);
    const owner = have && otherReleaseOwner(have.metadata.annotations, r);
    if (owner) found.push(`${o.kind} ${have.metadata.namespace ? `${have.metadata.namespace}/` : ''}${o.name} (release ${owner.namespace}/${owner.name})`);
  }
  return found;
}

export function helmReleaseStep(cfg: HelmStepConfig): Step<ReleaseWant, ReleaseHave> {
  return {
    name: cfg.name,
    needs: cfg.needs,
    timeoutMs: cfg.timeoutMs,
    want(settings: Settings): ReleaseWant {
      return { release: cfg.release(settings), rollout: cfg.rollout?.(settings) ?? [] };
    },
    have: readRelease,
    changes(want, have): Change[] {
      const ops = planRelease(want, have, cfg.refuseUpgrade);
      if (ops.length > 0) return ops.map((o) => o.change);
      const d = have.deployed;
      return [{ action: 'noop', target: releaseTarget(want.release), detail: `${chartString(d?.chart ?? have.chart)} deployed with the desired values (revision ${d?.revision ?? '?'})` }];
    },
    async change(ctx, changes, want, have): Promise<Outputs> {
      const r = want.release;
      const helmOpts = { timeoutMs: cfg.helmTimeoutMs, signal: ctx.signal };
      // Re-plan from the same inputs and run the operations whose change was asked for.
      const ops = planRelease(want, have, cfg.refuseUpgrade).filter((p) => changes.some((c) => isDeepStrictEqual(c, p.change)));
      let waited = false;
      let refused: string | undefined;
      for (const { op, change } of ops) {
        ctx.log.info({ action: change.action, target: change.target }, `${change.action} ${change.target}: ${change.detail ?? ''}`);
        switch (op.kind) {
          case 'rollback':
            await ctx.adapters.helm.rollback(r.name, r.namespace, op.toRevision, helmOpts);
            break;
          case 'uninstall':
            await ctx.adapters.helm.uninstall(r.name, r.namespace, helmOpts);
            break;
          case 'install':
          case 'upgrade':
            await upgradeInstall(ctx, r, helmOpts);
            break;
          case 'refuse':
            refused = op.reason;
            break;
          case 'wait':
            // One wait covers every workload: they roll out in parallel.
            if (!waited) {
              await waitForRollout(ctx, want.rollout, { timeoutMs: cfg.rolloutTimeoutMs, intervalMs: cfg.pollMs, what: r.name });
              waited = true;
            }
            break;
        }
      }
      // The revision just written is read once now, so the next boot's no-op finds it remembered
      // instead of decoding it. Only a saving: a failure here is no failure of the step.
      if (ops.some(({ op }) => op.kind === 'install' || op.kind === 'upgrade' || op.kind === 'rollback')) {
        try {
          await (await readReleaseHistory(ctx.adapters.kube, r.name, r.namespace, ctx.adapters.releaseMemo))[0]?.decode();
        } catch (e) {
          ctx.log.debug({ err: (e as Error).message }, `${releaseTarget(r)}: the new revision was not read back`);
        }
      }
      // Reported, not failed: it lasts until the user changes the pin, and what needs this
      // release goes on against the deployed version.
      if (refused) throw new ConflictError(`${releaseTarget(r)}: ${refused}`);
      return {};
    },
    rendered(want): Partial<Rendered> {
      return { helmReleases: [want.release] };
    },
  };
}

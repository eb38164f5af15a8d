// The shared want/have/changes/change of one Helm release, so cilium.ts and argocd.ts only say
// which chart, which values and what "ready" means.
//
// The rules (DESIGN.md, Helm):
// - no new revision on a no-op boot: skip when the deployed chart (name-version) and the
//   user-supplied values (`helm get values`) equal the desired ones and the release is deployed;
// - a killed helm leaves the release pending-*, and every later helm write fails with "another
//   operation is in progress": roll back to the last revision that was deployed, or uninstall a
//   release that never was, then install/upgrade as usual;
// - never `helm --wait` (it hangs without nodes): readiness is rollout.ts, a separate change.
import { isDeepStrictEqual } from 'node:util';
import type { Settings } from '../settings/schema.ts';
import { chartLabel, type ChartMeta } from '../adapters/helm.ts';
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
  chart: string; // "<name>-<version>"
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
}

const releaseTarget = (r: HelmReleaseSpec) => `HelmRelease ${r.namespace}/${r.name}`;
const chartString = (c: ChartMeta) => `${c.name}-${c.version}`;
/** Desired values as helm stores them: JSON round trip (no undefined, plain numbers). */
const normalised = (v: JsonObject): JsonObject => JSON.parse(JSON.stringify(v)) as JsonObject;

type Op =
  | { kind: 'rollback'; toRevision: number }
  | { kind: 'uninstall' }
  | { kind: 'install' }
  | { kind: 'upgrade' }
  | { kind: 'wait' };

interface PlannedOp {
  op: Op;
  change: Change;
}

/** Pure: the operations, in order, that bring `have` to `want`. */
export function planRelease(want: ReleaseWant, have: ReleaseHave): PlannedOp[] {
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
    const diff = [
      ...(d.chart === desiredChart ? [] : [{ path: '$.chart', from: d.chart, to: desiredChart }]),
      // Wrapped so the paths read $.values.hubble.relay.enabled next to $.chart.
      ...diffObjects({ values: d.values }, { values: normalised(r.values) }),
    ];
    const failed = d.status !== 'deployed';
    if (diff.length > 0 || failed) {
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
  const { helm } = ctx.adapters;
  const r = want.release;
  const chart: ChartMeta = 'path' in r.chart ? await helm.showChart(r.chart.path, ctx.signal) : { name: r.chart.chart, version: r.chart.version };
  const workloads = want.rollout.length > 0 ? await readWorkloads(ctx, want.rollout) : [];
  const current = await helm.get(r.name, r.namespace, ctx.signal);
  // `helm uninstall --keep-history` leaves an uninstalled record; install treats it as absent.
  if (!current || current.status === 'uninstalled') return { chart, workloads };

  if (!PENDING_STATUSES.includes(current.status)) {
    const values = await helm.values(r.name, r.namespace, undefined, ctx.signal);
    return { chart, workloads, deployed: { revision: current.revision, status: current.status, chart: current.chart, values } };
  }

  const history = await helm.history(r.name, r.namespace, ctx.signal);
  const back = history
    .filter((h) => h.revision < current.revision && ROLLBACK_TARGETS.includes(h.status))
    .sort((a, b) => b.revision - a.revision)[0];
  if (!back || current.status === 'uninstalling') {
    return { chart, workloads, recovery: { kind: 'uninstall', status: current.status, revision: current.revision } };
  }
  const values = await helm.values(r.name, r.namespace, back.revision, ctx.signal);
  return {
    chart,
    workloads,
    recovery: { kind: 'rollback', status: current.status, revision: current.revision, toRevision: back.revision },
    // A rollback deploys the old revision's chart and values as a new revision.
    deployed: { revision: current.revision + 1, status: 'deployed', chart: back.chart, values },
  };
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
      const ops = planRelease(want, have);
      if (ops.length > 0) return ops.map((o) => o.change);
      const d = have.deployed;
      return [{ action: 'noop', target: releaseTarget(want.release), detail: `${d?.chart ?? chartString(have.chart)} deployed with the desired values (revision ${d?.revision ?? '?'})` }];
    },
    async change(ctx, changes, want, have): Promise<Outputs> {
      const r = want.release;
      const helmOpts = { timeoutMs: cfg.helmTimeoutMs, signal: ctx.signal };
      // Re-plan from the same inputs and run the operations whose change was asked for.
      const ops = planRelease(want, have).filter((p) => changes.some((c) => isDeepStrictEqual(c, p.change)));
      let waited = false;
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
            await ctx.adapters.helm.upgradeInstall(r, helmOpts);
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
      return {};
    },
    rendered(want): Partial<Rendered> {
      return { helmReleases: [want.release] };
    },
  };
}

// The readiness wait after a Helm release, separate from helm itself: `helm --wait` hangs on a
// cluster with no schedulable node and cannot be switched off per workload, while this wait
// reads the same status fields `kubectl rollout status` reads, is bounded, reports progress,
// and can be turned off (settings cilium.waitForReady) where no pod can ever run.
import type { StepContext, KubeObject } from './types.ts';
import { TransientError, isTransient } from '../engine/errors.ts';
import { setTimeout as delay } from 'node:timers/promises';

export interface WorkloadRef {
  kind: 'DaemonSet' | 'Deployment';
  name: string;
  namespace: string;
}

export interface Readiness {
  ready: boolean;
  /** Short and human: "0 of 1 available", "ready", "not found". */
  summary: string;
}

export interface WorkloadState {
  ref: WorkloadRef;
  readiness: Readiness;
}

export const refLabel = (r: WorkloadRef): string => `${r.kind} ${r.namespace}/${r.name}`;

/** The timeout error; transient, since slow image pulls on a first boot clear by themselves. */
export class RolloutTimeoutError extends TransientError {
  override name = 'RolloutTimeoutError';
}

type Obj = Record<string, unknown>;
const num = (v: unknown): number => (typeof v === 'number' ? v : 0);

/** Pure: whether a DaemonSet or Deployment has rolled out, from its status. */
export function readiness(kind: WorkloadRef['kind'], obj: KubeObject | undefined): Readiness {
  if (!obj) return { ready: false, summary: 'not found' };
  const spec = (obj.spec ?? {}) as Obj;
  const status = (obj.status ?? {}) as Obj;
  const generation = num(obj.metadata.generation as unknown);
  const observed = num(status.observedGeneration);
  if (observed < generation) return { ready: false, summary: `controller has not seen generation ${generation} yet` };

  if (kind === 'DaemonSet') {
    const desired = num(status.desiredNumberScheduled);
    const updated = num(status.updatedNumberScheduled);
    const available = num(status.numberAvailable);
    // Zero desired means no node runs it yet; on a k3s node the agent is always scheduled.
    if (desired === 0) return { ready: false, summary: 'no node scheduled yet' };
    if (updated < desired) return { ready: false, summary: `${updated} of ${desired} updated` };
    if (available < desired) return { ready: false, summary: `${available} of ${desired} available` };
    return { ready: true, summary: `ready (${available} of ${desired})` };
  }

  const replicas = typeof spec.replicas === 'number' ? spec.replicas : 1;
  const conditions = (Array.isArray(status.conditions) ? status.conditions : []) as Obj[];
  const stuck = conditions.find((c) => c.type === 'Progressing' && c.reason === 'ProgressDeadlineExceeded');
  const updated = num(status.updatedReplicas);
  const current = num(status.replicas);
  const available = num(status.availableReplicas);
  const why = stuck ? ' (progress deadline exceeded)' : '';
  if (updated < replicas) return { ready: false, summary: `${updated} of ${replicas} updated${why}` };
  if (current > updated) return { ready: false, summary: `${current - updated} old replicas pending termination${why}` };
  if (available < updated) return { ready: false, summary: `${available} of ${updated} available${why}` };
  return { ready: true, summary: `ready (${available} of ${replicas})` };
}

export async function readWorkloads(ctx: Pick<StepContext, 'adapters'>, refs: readonly WorkloadRef[]): Promise<WorkloadState[]> {
  return Promise.all(
    refs.map(async (ref) => ({ ref, readiness: readiness(ref.kind, await ctx.adapters.kube.get('apps/v1', ref.kind, ref.name, ref.namespace)) })),
  );
}

export interface WaitOptions {
  timeoutMs: number;
  intervalMs: number;
  /** Names what is waited for in messages, e.g. "cilium". */
  what: string;
}

const describe = (states: readonly WorkloadState[]) => states.map((s) => `${refLabel(s.ref)}: ${s.readiness.summary}`).join('; ');


/** Polls until every workload is ready; throws RolloutTimeoutError naming what is not. */
export async function waitForRollout(
  ctx: Pick<StepContext, 'adapters' | 'log' | 'progress' | 'signal'>,
  refs: readonly WorkloadRef[],
  opts: WaitOptions,
): Promise<WorkloadState[]> {
  const started = Date.now();
  const deadline = started + opts.timeoutMs;
  let last = '';
  let lastLogged = 0;
  for (;;) {
    let states: WorkloadState[];
    try {
      states = await readWorkloads(ctx, refs);
    } catch (err) {
      // An apiserver blip (k3s restarting) is not a verdict on the rollout; keep polling.
      if (!isTransient(err)) throw err;
      states = refs.map((ref) => ({ ref, readiness: { ready: false, summary: `cannot read: ${(err as Error).message}` } }));
    }
    const text = describe(states);
    if (states.every((s) => s.readiness.ready)) {
      ctx.log.info({ event: 'rollout', waitedMs: Date.now() - started }, `${opts.what} is ready: ${text}`);
      return states;
    }
    const elapsed = Math.round((Date.now() - started) / 1000);
    ctx.progress(`waiting for ${opts.what} (${elapsed} s): ${text}`);
    // Log on every change, and every 30 s while nothing moves, so a slow first boot is visible.
    if (text !== last || Date.now() - lastLogged >= 30_000) {
      ctx.log.info({ event: 'rollout', elapsedS: elapsed }, `waiting for ${opts.what}: ${text}`);
      last = text;
      lastLogged = Date.now();
    }
    if (Date.now() >= deadline) {
      throw new RolloutTimeoutError(`${opts.what} not ready after ${Math.round(opts.timeoutMs / 100) / 10} s: ${text}`);
    }
    await delay(Math.min(opts.intervalMs, Math.max(0, deadline - Date.now())), undefined, { signal: ctx.signal });
  }
}

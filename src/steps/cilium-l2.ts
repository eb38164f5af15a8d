// The LB IPAM pool and the L2 announcement policy: server-side applied with one field manager,
// written only when they differ, and the daemon's own (labelled) pools and policies that
// settings no longer name are pruned. Objects without the label are never touched.
import { applyDiff, describeTakeovers, OWNER_LABEL, takeovers } from '../adapters/kube.ts';
import { desiredL2, l2ApiVersions, type L2Desired } from '../desired/l2.ts';
import type { Settings } from '../settings/schema.ts';
import type { Change, KubeObject, Outputs, Rendered, Step, StepContext } from './types.ts';

export interface CiliumL2Have {
  pool: KubeObject | undefined;
  policy: KubeObject | undefined;
  /** Names of labelled objects of each kind other than the desired one: to prune. */
  stalePools: string[];
  stalePolicies: string[];
}

const owned = (o: KubeObject) => Object.entries(OWNER_LABEL).every(([k, v]) => o.metadata.labels?.[k] === v);
const target = (o: KubeObject) => `${o.kind} ${o.metadata.name}`;

function objectChange(want: KubeObject, have: KubeObject | undefined): Change {
  const diff = applyDiff(want, have);
  if (!have) return { action: 'create', target: target(want), diff };
  if (diff.length === 0) return { action: 'noop', target: target(want) };
  const taken = takeovers(want, have);
  return { action: 'update', target: target(want), diff, ...(taken.length > 0 ? { detail: describeTakeovers(taken) } : {}) };
}

export const ciliumL2Step: Step<L2Desired, CiliumL2Have> = {
  name: 'cilium-l2',
  needs: ['cilium-crds'],
  timeoutMs: 120_000,
  want(settings: Settings, upstream: Outputs): L2Desired {
    return desiredL2(settings, l2ApiVersions(upstream));
  },
  async have(ctx: StepContext, want: L2Desired): Promise<CiliumL2Have> {
    const kube = ctx.adapters.kube;
    // One list per kind (a homelab has a handful) finds both ours by name and stale owned ones.
    const [pools, policies] = await Promise.all([kube.list(want.pool.apiVersion, want.pool.kind), kube.list(want.policy.apiVersion, want.policy.kind)]);
    const named = (items: KubeObject[], name: string) => items.find((o) => o.metadata.name === name);
    const stale = (items: KubeObject[], name: string) =>
      items
        .filter((o) => owned(o) && o.metadata.name !== name)
        .map((o) => o.metadata.name)
        .sort();
    return {
      pool: named(pools, want.pool.metadata.name),
      policy: named(policies, want.policy.metadata.name),
      stalePools: stale(pools, want.pool.metadata.name),
      stalePolicies: stale(policies, want.policy.metadata.name),
    };
  },
  changes(want: L2Desired, have: CiliumL2Have): Change[] {
    return [
      objectChange(want.pool, have.pool),
      objectChange(want.policy, have.policy),
      ...have.stalePools.map((n): Change => ({ action: 'delete', target: `${want.pool.kind} ${n}`, detail: 'made by homelab-bootstrap and no longer in settings' })),
      ...have.stalePolicies.map((n): Change => ({ action: 'delete', target: `${want.policy.kind} ${n}`, detail: 'made by homelab-bootstrap and no longer in settings' })),
    ];
  },
  async change(ctx: StepContext, changes: Change[], want: L2Desired, have: CiliumL2Have): Promise<Outputs> {
    const kube = ctx.adapters.kube;
    for (const c of changes) {
      const obj = [want.pool, want.policy].find((o) => target(o) === c.target);
      if ((c.action === 'create' || c.action === 'update') && obj) {
        // force: these objects are the daemon's; settings are their source of truth.
        await kube.apply(obj, { force: true, current: obj === want.pool ? have.pool : have.policy });
      } else if (c.action === 'delete') {
        const [kind, name] = c.target.split(' ') as [string, string];
        const apiVersion = kind === want.pool.kind ? want.pool.apiVersion : want.policy.apiVersion;
        await kube.delete(apiVersion, kind, name);
      }
    }
    return { poolApiVersion: want.poolApiVersion, l2PolicyApiVersion: want.l2PolicyApiVersion };
  },
  rendered(want: L2Desired): Partial<Rendered> {
    return { objects: [want.pool, want.policy] };
  },
};

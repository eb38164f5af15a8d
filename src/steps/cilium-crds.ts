// cilium-operator registers its CRDs at runtime, some time after the chart is installed (the
// plan's fixed `sleep 30s` was the bug). Watch until both are Established, bounded, then ask
// discovery which versions are served: the pool moved to cilium.io/v2 in 1.18.
import type { KubeClient } from '../adapters/kube.ts';
import { crdEstablished } from '../adapters/kube.ts';
import { L2_POLICY_CRD, POOL_CRD, type L2ApiVersions } from '../desired/l2.ts';
import type { Change, Outputs, Step, StepContext } from './types.ts';

const GROUP = 'cilium.io';
const POOL_PLURAL = 'ciliumloadbalancerippools';
const POLICY_PLURAL = 'ciliuml2announcementpolicies';

export interface CiliumCrdsWant {
  crds: string[];
}

export interface CiliumCrdsHave {
  /** Per CRD: "Established", "not found", "exists, not Established (…)". */
  state: Record<string, string>;
  /** Known when both were Established at read time and discovery already serves them. */
  versions?: L2ApiVersions;
}

export interface CiliumCrdsOptions {
  /** Bound of the wait for the operator; the error after it names the missing CRDs. */
  waitMs?: number;
  /** Bound of the discovery catch-up after Established. */
  discoveryWaitMs?: number;
}

async function discover(kube: KubeClient): Promise<L2ApiVersions | undefined> {
  const [poolApiVersion, l2PolicyApiVersion] = await Promise.all([kube.servedVersion(GROUP, POOL_PLURAL), kube.servedVersion(GROUP, POLICY_PLURAL)]);
  return poolApiVersion && l2PolicyApiVersion ? { poolApiVersion, l2PolicyApiVersion } : undefined;
}

export function makeCiliumCrdsStep(options: CiliumCrdsOptions = {}): Step<CiliumCrdsWant, CiliumCrdsHave> {
  const waitMs = options.waitMs ?? 180_000;
  const discoveryWaitMs = options.discoveryWaitMs ?? 15_000;
  return {
    name: 'cilium-crds',
    needs: ['cilium'],
    timeoutMs: waitMs + discoveryWaitMs + 15_000,
    want(): CiliumCrdsWant {
      return { crds: [POOL_CRD, L2_POLICY_CRD] };
    },
    async have(ctx: StepContext, want: CiliumCrdsWant): Promise<CiliumCrdsHave> {
      const kube = ctx.adapters.kube;
      const state: Record<string, string> = {};
      for (const name of want.crds) state[name] = crdEstablished(await kube.get('apiextensions.k8s.io/v1', 'CustomResourceDefinition', name)).detail;
      if (!Object.values(state).every((s) => s === 'Established')) return { state };
      const versions = await discover(kube);
      return versions ? { state, versions } : { state };
    },
    changes(want: CiliumCrdsWant, have: CiliumCrdsHave): Change[] {
      const waits: Change[] = want.crds
        .filter((n) => have.state[n] !== 'Established')
        .map((n) => ({ action: 'wait', target: `CRD ${n}`, detail: `${have.state[n] ?? 'not found'}; cilium-operator registers it at runtime` }));
      if (waits.length === 0 && !have.versions) waits.push({ action: 'wait', target: `API group ${GROUP}`, detail: 'discovery does not list the Cilium resources yet' });
      return waits;
    },
    async change(ctx: StepContext, changes: Change[], want: CiliumCrdsWant, have: CiliumCrdsHave): Promise<Outputs> {
      const kube = ctx.adapters.kube;
      if (have.versions && changes.length === 0) return { ...have.versions };
      await kube.waitCrdsEstablished(want.crds, {
        timeoutMs: waitMs,
        signal: ctx.signal,
        onProgress: (text) => {
          ctx.progress(text);
          ctx.log.info(text);
        },
      });
      // Discovery can trail the Established condition by a moment: poll it briefly.
      const deadline = performance.now() + discoveryWaitMs;
      for (;;) {
        const versions = await discover(kube);
        if (versions) {
          ctx.log.info(versions, 'Cilium CRDs Established; served versions from discovery');
          return { ...versions };
        }
        if (performance.now() > deadline) throw new Error(`Cilium CRDs are Established but discovery does not serve ${POOL_PLURAL}/${POLICY_PLURAL}.${GROUP} after ${Math.round(discoveryWaitMs / 1000)} s`);
        ctx.signal.throwIfAborted();
        await new Promise((r) => setTimeout(r, 250));
      }
    },
    outputs(_want: CiliumCrdsWant, have: CiliumCrdsHave): Outputs {
      return have.versions ? { ...have.versions } : {};
    },
    rendered() {
      return {};
    },
  };
}

export const ciliumCrdsStep = makeCiliumCrdsStep();

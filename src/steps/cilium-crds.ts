// cilium-operator registers its CRDs at runtime, some time after the chart is installed (the
// plan's fixed `sleep 30s` was the bug). Watch until both are Established, bounded, then ask
// discovery which versions are served: the pool moved to cilium.io/v2 in 1.18.
import type { KubeClient } from '../adapters/kube.ts';
import { crdEstablished } from '../adapters/kube.ts';
import { L2_POLICY_CRD, POOL_CRD, type L2ApiVersions } from '../desired/l2.ts';
import type { Change, KubeObject, Outputs, Step, StepContext } from './types.ts';

const GROUP = 'cilium.io';
const CRD_API = 'apiextensions.k8s.io/v1';

export interface CiliumCrdsWant {
  crds: string[];
}

export interface CiliumCrdsHave {
  /** Per CRD: "Established", "not found", "exists, not Established (…)". */
  state: Record<string, string>;
  /** Known when both were Established at read time and discovery already agrees with them. */
  versions?: L2ApiVersions;
}

export interface CiliumCrdsOptions {
  /** Bound of the wait for the operator; the error after it names the missing CRDs. */
  waitMs?: number;
  /** Bound of the discovery catch-up after Established. */
  discoveryWaitMs?: number;
}

const pluralOf = (crdName: string) => crdName.slice(0, crdName.indexOf('.'));

/** The apiVersions a CRD says it serves. */
function crdServed(crd: KubeObject): string[] {
  const versions = ((crd.spec as { versions?: { name: string; served?: boolean }[] } | undefined)?.versions ?? []).filter((v) => v.served);
  return versions.map((v) => `${GROUP}/${v.name}`).sort();
}

/**
 * Discovery's preferred version of the pool and the policy, once discovery serves exactly the
 * versions each CRD declares. Discovery trails a CRD change by a moment (right after Established,
 * or after an upgrade adds v2), and a stale answer would pin the pool to the old version.
 */
export async function discoverL2Versions(kube: Pick<KubeClient, 'servedVersions'>, crds: Map<string, KubeObject>): Promise<L2ApiVersions | undefined> {
  if (!crds.has(POOL_CRD) || !crds.has(L2_POLICY_CRD)) return undefined;
  const served = await kube.servedVersions(GROUP, [pluralOf(POOL_CRD), pluralOf(L2_POLICY_CRD)]);
  const pick = (crdName: string) => {
    const versions = served[pluralOf(crdName)] ?? [];
    return JSON.stringify([...versions].sort()) === JSON.stringify(crdServed(crds.get(crdName)!)) ? versions[0] : undefined;
  };
  const [poolApiVersion, l2PolicyApiVersion] = [pick(POOL_CRD), pick(L2_POLICY_CRD)];
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
      const established = new Map<string, KubeObject>();
      for (const name of want.crds) {
        const crd = await kube.get(CRD_API, 'CustomResourceDefinition', name);
        const s = crdEstablished(crd);
        state[name] = s.detail;
        if (s.established && crd) established.set(name, crd);
      }
      if (established.size < want.crds.length) return { state };
      const versions = await discoverL2Versions(kube, established);
      return versions ? { state, versions } : { state };
    },
    changes(want: CiliumCrdsWant, have: CiliumCrdsHave): Change[] {
      const waits: Change[] = want.crds
        .filter((n) => have.state[n] !== 'Established')
        .map((n) => ({ action: 'wait', target: `CRD ${n}`, detail: `${have.state[n] ?? 'not found'}; cilium-operator registers it at runtime` }));
      if (waits.length === 0 && !have.versions) waits.push({ action: 'wait', target: `API group ${GROUP}`, detail: 'discovery does not serve the Cilium CRDs as declared yet' });
      return waits;
    },
    async change(ctx: StepContext, _changes: Change[], want: CiliumCrdsWant): Promise<Outputs> {
      const kube = ctx.adapters.kube;
      const crds = await kube.waitCrdsEstablished(want.crds, {
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
        const versions = await discoverL2Versions(kube, crds);
        if (versions) {
          ctx.log.info(versions, 'Cilium CRDs Established; served versions from discovery');
          return { ...versions };
        }
        if (performance.now() > deadline) {
          throw new Error(`Cilium CRDs are Established but discovery does not serve ${want.crds.join(', ')} as declared after ${Math.round(discoveryWaitMs / 1000)} s`);
        }
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

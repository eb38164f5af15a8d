// The hand-over: the root ApplicationSet, server-side applied (its CRD is too large for
// client-side apply) once the ApplicationSet CRD is Established. From here git owns the rest.
import { applyDiff, describeTakeovers, takeovers } from '../adapters/kube.ts';
import { APPSET_CRD, desiredAppSet } from '../desired/appset.ts';
import type { Settings } from '../settings/schema.ts';
import type { Change, KubeObject, Rendered, Step, StepContext } from './types.ts';

export interface RootAppsetHave {
  /** Whether discovery serves ApplicationSet (it does only once the CRD is Established). */
  served: boolean;
  current: KubeObject | undefined;
}

export interface RootAppsetOptions {
  /** Bound of the wait for the ApplicationSet CRD (the argocd chart installs it). */
  crdWaitMs?: number;
}

const target = (o: KubeObject) => `${o.kind} ${o.metadata.namespace}/${o.metadata.name}`;

export function makeRootAppsetStep(options: RootAppsetOptions = {}): Step<KubeObject, RootAppsetHave> {
  const crdWaitMs = options.crdWaitMs ?? 120_000;
  return {
    name: 'root-appset',
    // repo-credential first: with a private repoURL, the ApplicationSet's git generator fails until Argo CD can read it.
    needs: ['argocd', 'repo-credential'],
    timeoutMs: crdWaitMs + 60_000,
    want(settings: Settings): KubeObject {
      return desiredAppSet(settings);
    },
    async have(ctx: StepContext, want: KubeObject): Promise<RootAppsetHave> {
      const kube = ctx.adapters.kube;
      // Discovery, not a GET of the CRD: that object is megabytes, and this runs every boot.
      const served = await kube.serves(want.apiVersion, want.kind);
      return { served, current: served ? await kube.get(want.apiVersion, want.kind, want.metadata.name, want.metadata.namespace) : undefined };
    },
    changes(want: KubeObject, have: RootAppsetHave): Change[] {
      const out: Change[] = [];
      if (!have.served) out.push({ action: 'wait', target: `CRD ${APPSET_CRD}`, detail: 'the argocd chart installs it' });
      const diff = applyDiff(want, have.current);
      if (!have.current) out.push({ action: 'create', target: target(want), diff });
      else if (diff.length === 0) out.push({ action: 'noop', target: target(want) });
      else {
        const taken = takeovers(want, have.current);
        out.push({ action: 'update', target: target(want), diff, ...(taken.length > 0 ? { detail: describeTakeovers(taken) } : {}) });
      }
      return out;
    },
    async change(ctx: StepContext, changes: Change[], want: KubeObject, have: RootAppsetHave): Promise<void> {
      const kube = ctx.adapters.kube;
      if (changes.some((c) => c.action === 'wait')) {
        await kube.waitCrdsEstablished([APPSET_CRD], {
          timeoutMs: crdWaitMs,
          signal: ctx.signal,
          onProgress: (text) => {
            ctx.progress(text);
            ctx.log.info(text);
          },
        });
        await kube.waitServed(want.apiVersion, want.kind, { timeoutMs: 15_000, signal: ctx.signal });
      }
      if (changes.some((c) => c.action === 'create' || c.action === 'update')) await kube.apply(want, { force: true, current: have.current });
    },
    rendered(want: KubeObject): Partial<Rendered> {
      return { objects: [want] };
    },
  };
}

export const rootAppsetStep = makeRootAppsetStep();

// The bootstrap, as DESIGN.md's step table. Order here is only the tie-break; `needs` is the graph.
import type { Step } from './types.ts';
import { preflightStep } from './preflight.ts';
import { ciliumStep } from './cilium.ts';
import { ciliumCrdsStep } from './cilium-crds.ts';
import { ciliumL2Step } from './cilium-l2.ts';
import { ageKeyStep } from './age-key.ts';
import { repoCredentialStep } from './repo-credential.ts';
import { argocdStep } from './argocd.ts';
import { tunnelStep } from './tunnel.ts';
import { dnsStep } from './dns.ts';
import { rootAppsetStep } from './root-appset.ts';

export const STEPS: readonly Step[] = [
  preflightStep,
  ciliumStep,
  ciliumCrdsStep,
  ciliumL2Step,
  ageKeyStep,
  repoCredentialStep,
  argocdStep,
  tunnelStep,
  dnsStep,
  rootAppsetStep,
] as Step[];

// `render`: the whole desired state from settings alone. Contacts nothing, reads no
// secret, and the same settings always give the same bytes.
import { stringify } from 'yaml';
import type { Settings } from './settings/schema.ts';
import { RENDER_UPSTREAM, type Outputs, type Rendered, type Step } from './steps/types.ts';
import { topoOrder } from './engine/run.ts';
import { STEPS } from './steps/index.ts';

export function renderWith(steps: readonly Step[], settings: Settings): Rendered {
  const out: Rendered = { helmReleases: [], objects: [], dns: null, tunnel: null };
  const upstream: Outputs = { ...RENDER_UPSTREAM };
  for (const step of topoOrder(steps)) {
    if (step.enabled && !step.enabled(settings)) continue;
    const part = step.rendered(step.want(settings, upstream));
    out.helmReleases.push(...(part.helmReleases ?? []));
    out.objects.push(...(part.objects ?? []));
    if (part.dns) out.dns = part.dns;
    if (part.tunnel) out.tunnel = part.tunnel;
  }
  return out;
}

export function render(settings: Settings): Rendered {
  return renderWith(STEPS, settings);
}

export function formatRendered(r: Rendered, format: 'yaml' | 'json'): string {
  return format === 'json' ? JSON.stringify(r, null, 2) + '\n' : stringify(r, { lineWidth: 0 });
}

// Pure: the tunnel the settings ask for, and how its ingress rules compare with what the
// Cloudflare API returns. The hosts table is the one list both DNS and the tunnel come from.
import { DEFAULTS, type Settings } from '../settings/schema.ts';
import { hostFqdn } from '../settings/names.ts';
import type { FieldDiff, TunnelIngressRule } from '../steps/types.ts';

/** cloudflared requires a last rule without hostname or path; it answers everything else. */
export const CATCH_ALL: TunnelIngressRule = { service: 'http_status:404' };

export const TUNNEL_SECRET = { namespace: 'cloudflared', name: 'tunnel-token', key: 'token' } as const;

export interface TunnelWant {
  accountId: string;
  name: string;
  ingress: TunnelIngressRule[];
  secret: typeof TUNNEL_SECRET;
}

/** A rule as the API returns it: it adds `originRequest: {}` to every rule it stores. */
export interface IngressRuleAsReturned {
  hostname?: string;
  path?: string;
  service: string;
  originRequest?: Record<string, unknown>;
}

/** One rule per external host (settings order), then the catch-all. */
export function desiredIngress(settings: Settings): TunnelIngressRule[] {
  const rules = settings.hosts
    .filter((h) => h.access === 'external')
    .map((h) => ({ hostname: hostFqdn(h, settings.domain), service: h.service ?? DEFAULTS.ingressService }));
  return [...rules, { ...CATCH_ALL }];
}

export function desiredTunnel(settings: Settings): TunnelWant {
  const cf = settings.cloudflare;
  if (!cf) throw new Error('the tunnel needs the cloudflare section of the settings');
  return { accountId: cf.accountId, name: cf.tunnelName, ingress: desiredIngress(settings), secret: TUNNEL_SECRET };
}

/**
 * The comparable form of a rule: lowercase hostname, empty path and empty originRequest
 * dropped (the API adds `originRequest: {}`; counting it would rewrite the rules every run).
 * Non-empty originRequest settings stay, so hand-made dashboard tweaks show up as drift.
 */
export function normaliseRule(r: IngressRuleAsReturned): IngressRuleAsReturned {
  // Fixed key order: the comparison is by JSON text.
  return {
    ...(r.hostname ? { hostname: r.hostname.toLowerCase().replace(/\.$/, '') } : {}),
    ...(r.path ? { path: r.path } : {}),
    service: r.service,
    ...(r.originRequest && Object.keys(r.originRequest).length > 0 ? { originRequest: r.originRequest } : {}),
  };
}

/** Rule-by-rule differences; empty when the API already holds exactly the wanted rules. */
export function ingressDiff(want: readonly TunnelIngressRule[], have: readonly IngressRuleAsReturned[] | null | undefined): FieldDiff[] {
  const w = want.map(normaliseRule);
  const h = (have ?? []).map(normaliseRule);
  const diffs: FieldDiff[] = [];
  for (let i = 0; i < Math.max(w.length, h.length); i++) {
    const a = h[i];
    const b = w[i];
    if (JSON.stringify(a) === JSON.stringify(b)) continue;
    diffs.push({ path: `$.config.ingress[${i}]`, ...(a !== undefined ? { from: a } : {}), ...(b !== undefined ? { to: b } : {}) });
  }
  return diffs;
}

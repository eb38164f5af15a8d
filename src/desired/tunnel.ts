// Pure: the tunnel the settings ask for, and how its ingress rules compare with what the
// Cloudflare API returns. The hosts table is the one list both DNS and the tunnel come from.
import { DEFAULTS, type Settings } from '../settings/schema.ts';
import { hostFqdn } from '../settings/names.ts';
import type { FieldDiff, TunnelIngressRule } from '../steps/types.ts';

/** cloudflared requires a last rule without hostname or path; it answers everything else. */
export const CATCH_ALL: TunnelIngressRule = { service: 'http_status:404' };

export const TUNNEL_SECRET = { namespace: 'cloudflared', name: 'tunnel-token', key: 'token' } as const;

/** The replicas of manifests/argocd-homelab/infra/cloudflared/deployment.yaml: each is one connector. */
export const EXPECTED_CONNECTORS = 2;

/** What the notes need of a tunnel as Cloudflare lists it. */
export interface TunnelSeen {
  id: string;
  name: string;
  /** Distinct cloudflared processes connected. */
  connectors: number;
  /** inactive (never ran), healthy, degraded, down (ran, no connection now). */
  status: string;
}

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

/**
 * Whether a cloudflared token (base64 of JSON {a: account, t: tunnel id, s: tunnel secret}, the
 * format `cloudflared tunnel token` prints) belongs to this account's tunnel.
 */
export function tokenIsFor(token: string, accountId: string, tunnelId: string): boolean {
  try {
    const t = JSON.parse(Buffer.from(token.trim(), 'base64').toString('utf8')) as { a?: unknown; t?: unknown; s?: unknown };
    return t.a === accountId && t.t === tunnelId && typeof t.s === 'string' && t.s.length > 0;
  } catch {
    return false;
  }
}

const connectors = (n: number): string => `${n} connector${n === 1 ? '' : 's'}`;

/** One line for plan, the log and status: how many cloudflared run this tunnel, and what that means. */
export function connectorNote(name: string, t: TunnelSeen): string {
  const head = `tunnel ${name} (${t.id}): ${connectors(t.connectors)}`;
  if (t.connectors === 0) {
    return t.status === 'inactive'
      ? `${head}: cloudflared has never connected (it starts once Argo CD syncs infra/cloudflared and Secret ${TUNNEL_SECRET.namespace}/${TUNNEL_SECRET.name} exists)`
      : `${head}: cloudflared is not running (it was connected before); check the pods in namespace ${TUNNEL_SECRET.namespace}`;
  }
  if (t.connectors > EXPECTED_CONNECTORS) {
    return `${head}, more than the ${EXPECTED_CONNECTORS} the cloudflared Deployment runs: another cloudflared (an old setup?) runs with this tunnel's token and takes part of the traffic; find it with \`cloudflared tunnel info ${name}\` and stop it`;
  }
  return `${head}, status ${t.status}`;
}

/** One line for another tunnel that still has connectors: what it is and how to retire it. */
export function otherTunnelNote(t: TunnelSeen, managed: string): string {
  return (
    `other tunnel ${t.name} (${t.id}) still has ${connectors(t.connectors)} (status ${t.status}): once its hostnames point at tunnel ${managed}, ` +
    `stop its cloudflared and retire it with \`cloudflared tunnel cleanup ${t.name}\` then \`cloudflared tunnel delete ${t.name}\` ` +
    `(or Zero Trust dashboard › Networks › Tunnels › Delete); homelab-bootstrap never deletes a tunnel it did not create`
  );
}

// The one interface every bootstrap step implements: what it wants (pure, from settings),
// what is there (read-only I/O), what to change (pure diff), and the change itself (writes
// only that diff). `render` uses want(), `plan` stops after changes(), `apply` does it all.
import type { Logger } from 'pino';
import type { ChartRef, Settings } from '../settings/schema.ts';
import type { Credentials } from '../credentials.ts';
import type { Adapters } from '../adapters/index.ts';

export const STEP_NAMES = [
  'preflight',
  'cilium',
  'cilium-crds',
  'cilium-l2',
  'age-key',
  'argocd',
  'tunnel',
  'dns',
  'root-appset',
] as const;
export type StepName = (typeof STEP_NAMES)[number];

/** Values a step hands to the steps that need it (e.g. the tunnel id for dns). */
export type Outputs = Record<string, unknown>;

export interface FieldDiff {
  path: string; // JSON path inside the object, e.g. "$.hubble.relay.enabled"
  from?: unknown; // absent = field added
  to?: unknown; // absent = field removed
}

export type ChangeAction = 'create' | 'update' | 'delete' | 'noop' | 'wait' | 'conflict';

export interface Change {
  action: ChangeAction;
  /** What is changed, readable: "HelmRelease kube-system/cilium", "DNS A sonarr.example.org (zone example.org)". */
  target: string;
  diff?: FieldDiff[];
  /** One human sentence, e.g. why a conflict or what a wait is for. Never secret. */
  detail?: string;
}

export interface StepContext {
  settings: Settings;
  log: Logger; // already carries { step }
  signal: AbortSignal; // aborted on the step's timeout
  credentials: Credentials;
  adapters: Adapters;
  /** Outputs of the steps this step needs (merged). */
  upstream: Outputs;
  /** Report what the step is waiting for (systemd status line). */
  progress(text: string): void;
}

export interface Step<Want = unknown, Have = unknown> {
  readonly name: StepName;
  readonly needs: readonly StepName[];
  /** Per-attempt bound; the engine aborts ctx.signal after it. */
  readonly timeoutMs?: number;
  /** Skip the step entirely for these settings (e.g. no cloudflare section). */
  enabled?(settings: Settings): boolean;
  /** Pure: the desired state from settings and upstream outputs. Reads no secret, no I/O. */
  want(settings: Settings, upstream: Outputs): Want;
  /** Read-only: what is there now. */
  have(ctx: StepContext, want: Want): Promise<Have>;
  /** Pure: the difference. A step with nothing to do returns only 'noop' changes (or none). */
  changes(want: Want, have: Have): Change[];
  /** Writes exactly `changes`. Returns outputs for dependents (merged over outputs()). */
  change(ctx: StepContext, changes: Change[], want: Want, have: Have): Promise<Outputs | void>;
  /** Outputs known without writing (plan mode, or when nothing changed). */
  outputs?(want: Want, have: Have): Outputs;
  /** This step's share of `render`: the desired state in the common shape. */
  rendered(want: Want): Partial<Rendered>;
}

export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string>; [k: string]: unknown };
  [k: string]: unknown;
}

export interface HelmReleaseSpec {
  name: string;
  namespace: string;
  chart: ChartRef;
  values: Record<string, unknown>;
}

export interface DnsRecordSpec {
  type: 'A' | 'CNAME';
  name: string; // lowercase FQDN
  content: string;
  proxied: boolean;
  ttl: number; // 1 = automatic
  comment: string;
}

export interface TunnelIngressRule {
  hostname?: string;
  service: string;
}

/** One Cloudflare zone's records, as `render` prints them. */
export interface RenderedZone {
  zone: string;
  records: DnsRecordSpec[];
}

/** The whole desired state, as `render` prints it. Secret values appear only as references. */
export interface Rendered {
  helmReleases: HelmReleaseSpec[];
  objects: KubeObject[];
  dns: RenderedZone[] | null;
  tunnel: { name: string; ingress: TunnelIngressRule[] } | null;
}

/** Placeholder outputs for `render`, which contacts nothing. */
export const RENDER_UPSTREAM: Outputs = { tunnelId: '<tunnel-id>' };

export const isWrite = (c: Change): boolean => c.action === 'create' || c.action === 'update' || c.action === 'delete';

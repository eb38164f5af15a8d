// The one source of truth for settings. The NixOS module documents the same fields; the
// contract test checks both against `settingsJsonSchema()` so they cannot drift.
import { z } from 'zod';
import { isIPv4 } from 'node:net';

export const DEFAULTS = {
  // The newest Cilium whose tested Kubernetes versions (1.33–1.36) include the k3s of NixOS
  // 26.05 (1.35); 1.18 stops at 1.33. Cilium upgrades one minor at a time.
  cilium: { repo: 'https://helm.cilium.io', chart: 'cilium', version: '1.20.0' },
  argocd: { repo: 'https://argoproj.github.io/argo-helm', chart: 'argo-cd', version: '10.1.1' },
  ksopsImage: 'viaductoss/ksops:v4.5.1',
  cloudflareApi: 'https://api.cloudflare.com/client/v4',
  // k3s' embedded client load balancer: present on every k3s node, unlike a LAN IP.
  apiServer: { host: '127.0.0.1', port: 6444 },
  ingressService: 'http://cilium-ingress.kube-system.svc.cluster.local:80',
  ownerComment: 'managed-by=homelab-bootstrap',
} as const;

const ipv4 = z.string().refine((s) => isIPv4(s), { message: 'expected an IPv4 address like 192.168.0.240' });
const dnsLabel = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;
const isHostname = (s: string): boolean => s.toLowerCase().replace(/\.$/, '').split('.').every((l) => dnsLabel.test(l));
const hostname = z.string().min(1).refine(isHostname, { message: 'expected a DNS name: labels of a-z, 0-9 and "-", dot-separated' });
const absPath = z.string().refine((s) => s.startsWith('/'), { message: 'expected an absolute file path' });
const k8sName = z
  .string()
  .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, 'expected a Kubernetes name (lowercase letters, digits, "-")')
  .max(63);

// A chart comes either from a Helm repository at a pinned version, or from a local .tgz
// (how the Nix package ships charts: no network at boot).
const chartRef = z.union([
  z.strictObject({
    repo: z.url({ message: 'expected the Helm repository URL' }),
    chart: z.string().min(1),
    version: z.string().regex(/^v?\d+\.\d+\.\d+([-+].*)?$/, 'expected a pinned chart version like 1.18.4'),
  }),
  z.strictObject({ path: absPath.describe('A chart .tgz or chart directory, e.g. from the Nix store.') }),
]);

const MAX_VALUES_DEPTH = 64;
function depth(v: unknown, limit: number): number {
  if (v === null || typeof v !== 'object' || limit < 0) return 0;
  let d = 0;
  for (const child of Object.values(v)) d = Math.max(d, depth(child, limit - 1));
  return d + 1;
}
// Values nested absurdly deep would pass here and overflow the stack in render or helm later.
const jsonObject = z
  .record(z.string(), z.unknown())
  .refine((v) => depth(v, MAX_VALUES_DEPTH + 1) <= MAX_VALUES_DEPTH, `expected values nested at most ${MAX_VALUES_DEPTH} levels deep`);

// Becomes part of every record comment ("managed-by=homelab-bootstrap owner=<id>"), which Cloudflare
// Free caps at 100 characters.
export const OWNER_ID = /^[A-Za-z0-9._-]{1,40}$/;

const host = z.strictObject({
  name: z
    .string()
    .min(1)
    .refine((n) => n === '@' || isHostname(n), { message: 'expected "@" (the zone apex) or a DNS name: labels of a-z, 0-9 and "-", dot-separated' })
    .describe('Label under `zone` ("sonarr"), "@" for the apex of `zone`, or a full name inside it ("sonarr.example.org"). Without `zone`, all relative to `domain`.'),
  zone: hostname
    .optional()
    .describe('Cloudflare zone the host lives in, for a host outside `domain` (another zone the API token can edit); defaults to cloudflare.zone (or `domain`).'),
  access: z.enum(['external', 'local'], { message: 'expected "external" (through the tunnel) or "local" (A record on the LAN)' }),
  ip: ipv4.optional().describe('Local hosts only: the A record target; defaults to network.ingressIP.'),
  service: z
    .string()
    .regex(/^(https?|tcp|ssh|rdp|unix|http_status):/, 'expected a cloudflared service URL like http://svc.ns.svc.cluster.local:80')
    .optional()
    .describe('External hosts only: where the tunnel sends traffic; defaults to the Cilium shared ingress.'),
  ttl: z
    .number()
    .int()
    .refine((t) => t === 1 || (t >= 60 && t <= 86400), 'expected 1 (automatic) or 60-86400 seconds, as Cloudflare accepts')
    .optional()
    .describe('DNS TTL in seconds; 1 means automatic. Proxied (external) records are always automatic.'),
  adopt: z.boolean().optional().describe('Take over an existing record of this name that the daemon did not create.'),
});

export const settingsSchema = z.strictObject({
  domain: hostname.describe('The zone every host lives in, e.g. example.org.'),
  kubeconfigFile: absPath.default('/etc/rancher/k3s/k3s.yaml').describe('Credential: the k3s admin kubeconfig.'),
  network: z.strictObject({
    lbPool: z.strictObject({ start: ipv4, stop: ipv4 }).describe('LoadBalancer IPs Cilium may hand out (L2-announced).'),
    ingressIP: ipv4.describe('VIP of the shared Cilium ingress; local hosts point here.'),
    interfaces: z
      .array(z.string().min(1))
      .min(1)
      .default(['^eth[0-9]+', '^en.+'])
      .describe('NIC name regexes for L2 announcements; must match real NICs.'),
    apiServer: z
      .strictObject({
        host: z.string().min(1).default(DEFAULTS.apiServer.host),
        port: z.number().int().min(1).max(65535).default(DEFAULTS.apiServer.port),
      })
      .default({ ...DEFAULTS.apiServer })
      .describe('What Cilium (kube-proxy replacement) dials for the API server.'),
  }),
  cilium: z
    .strictObject({
      chart: chartRef.default({ ...DEFAULTS.cilium }),
      values: jsonObject.default({}).describe('Deep-merged over the generated values.'),
      waitForReady: z.boolean().default(true).describe('Wait for the agent DaemonSet and operator Deployment.'),
    })
    .default({ chart: { ...DEFAULTS.cilium }, values: {}, waitForReady: true }),
  argocd: z
    .strictObject({
      chart: chartRef.default({ ...DEFAULTS.argocd }),
      values: jsonObject.default({}).describe('Deep-merged over the generated values.'),
      hostname: hostname.default('argocd').describe('Ingress host of the Argo CD UI, a label under `domain` or a full name.'),
    })
    .default({ chart: { ...DEFAULTS.argocd }, values: {}, hostname: 'argocd' }),
  sops: z
    .strictObject({ ageKeyFile: absPath.default('/var/lib/sops-nix/keys.txt').describe('Credential: the host age identity.') })
    .default({ ageKeyFile: '/var/lib/sops-nix/keys.txt' }),
  gitops: z.strictObject({
    repoURL: z.string().min(1).describe('Git repository ArgoCD syncs.'),
    revision: z.string().min(1).default('main'),
    path: z.string().min(1).default('manifests/argocd-homelab').describe('Directory holding the groups of apps.'),
    groups: z.array(k8sName).min(1).default(['infra', 'apps', 'media']).describe('Each group/* directory becomes an Application.'),
    repoCredentialFile: absPath.optional().describe('Credential: HTTPS token or SSH private key for a private gitops.repoURL.'),
    repoUsername: z.string().min(1).optional().describe('Username for an HTTPS token (default "git").'),
  }),
  cloudflare: z
    .strictObject({
      accountId: z.string().regex(/^[0-9a-f]{32}$/, 'expected the 32-hex-digit Cloudflare account id'),
      zone: hostname.optional().describe('Zone name; defaults to `domain`.'),
      zoneId: z.string().regex(/^[0-9a-f]{32}$/, 'expected the 32-hex-digit zone id').optional(),
      tunnelName: z.string().min(1).max(200).default('homelab'),
      apiTokenFile: absPath.describe('Credential: API token (Tunnel Edit, DNS Edit, Zone Read).'),
      apiBaseUrl: z.url().default(DEFAULTS.cloudflareApi),
      adopt: z.boolean().default(false).describe('Take over existing unowned records of every host.'),
      ownerId: z
        .string()
        .regex(OWNER_ID, 'expected 1-40 characters of A-Z, a-z, 0-9, ".", "_" or "-"')
        .optional()
        .describe('This install\'s identity in the record comments (managed-by=homelab-bootstrap owner=<ownerId>); records of other owners are never touched. Defaults to tunnelName. Give each install sharing a zone its own.'),
      adoptExternalDnsOwner: z
        .string()
        .min(1)
        .optional()
        .describe('With adopt: also delete the external-dns registry TXT records of this external-dns owner (its --txt-owner-id) on adopted names.'),
    })
    .optional()
    .describe('Omit to skip the tunnel and DNS steps.'),
  hosts: z.array(host).default([]),
});

export type Settings = z.output<typeof settingsSchema>;
export type SettingsInput = z.input<typeof settingsSchema>;
export type Host = z.output<typeof host>;
export type ChartRef = z.output<typeof chartRef>;

export function settingsJsonSchema(): Record<string, unknown> {
  return z.toJSONSchema(settingsSchema, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;
}

// What `doctor` looks for: the parts of the old stack SPEC.md removes, and leftovers that break the
// bootstrap. Pure: it gets the listed objects (metadata is enough for most) and what the host
// showed, and returns one finding per component. It never suggests deleting something the
// bootstrap can take over itself, and it deletes nothing.
import type { KubeObject } from '../steps/types.ts';
import { ARGOCD_RELEASE } from '../steps/argocd.ts';
import { otherReleaseOwner } from '../steps/helm-release.ts';
import { APPSET_NAME, APPSET_NAMESPACE } from '../desired/appset.ts';

export interface Finding {
  /** The old-stack part: "flannel", "MetalLB", … */
  component: string;
  /** What was seen, naming the objects or host facts. */
  found: string;
  /** Why it matters to the new stack. */
  why: string;
  /** What the user does about it (never "the tool deletes it"). */
  todo: string;
}

/** What the cluster reader lists. Kinds the server does not serve come as []. */
export interface ClusterSnapshot {
  nodes: KubeObject[];
  daemonSets: KubeObject[];
  deployments: KubeObject[];
  /** CRDs, metadata only. */
  crds: KubeObject[];
  /** helm.cattle.io HelmChart objects (k3s' packaged add-ons). */
  helmCharts: KubeObject[];
  /** cert-manager ClusterIssuers and Issuers. */
  issuers: KubeObject[];
  /** external-secrets ClusterSecretStores and SecretStores. */
  secretStores: KubeObject[];
  /** Argo CD Applications, metadata only. */
  applications: KubeObject[];
  ingressClasses: KubeObject[];
}

/** What the host reader saw; `undefined` = could not look (the reason is in `notes`). */
export interface HostSnapshot {
  /** Names under /sys/class/net. */
  links?: string[];
  /** `iptables-save` output. */
  iptables?: string;
  /** The directories in the app config directory (/var/data/configs). */
  configs?: { dir: string; entries: string[] };
  /** Why something could not be checked; shown, but not a finding. */
  notes: string[];
}

/** CRDs the Argo CD chart installs (crds.install), and so wants to own. Cilium's are made by its operator, not the chart. */
export const ARGOCD_CHART_CRDS = ['applications.argoproj.io', 'applicationsets.argoproj.io', 'appprojects.argoproj.io'] as const;

const ref = (o: KubeObject): string => `${o.kind} ${o.metadata.namespace ? `${o.metadata.namespace}/` : ''}${o.metadata.name}`;
const labels = (o: KubeObject): Record<string, string> => o.metadata.labels ?? {};
const annotations = (o: KubeObject): Record<string, string> => o.metadata.annotations ?? {};
const list = (xs: string[], max = 6): string => (xs.length <= max ? xs.join(', ') : `${xs.slice(0, max).join(', ')} and ${xs.length - max} more`);

/** k3s records its command line on the Node as a JSON array (config-file settings included). */
export function k3sNodeArgs(node: KubeObject): { has(flag: string): boolean; values(flag: string): string[] } | undefined {
  const raw = annotations(node)['k3s.io/node-args'];
  if (!raw) return undefined;
  let args: unknown;
  try {
    args = JSON.parse(raw);
  } catch {
    return undefined;
  }
  if (!Array.isArray(args)) return undefined;
  const a = args.map(String);
  const values = (flag: string): string[] => {
    const out: string[] = [];
    a.forEach((x, i) => {
      if (x === `--${flag}` && i + 1 < a.length && !a[i + 1]!.startsWith('--')) out.push(a[i + 1]!);
      else if (x.startsWith(`--${flag}=`)) out.push(x.slice(flag.length + 3));
    });
    return out;
  };
  // k3s records `--flag=false` as two args, ["--flag", "false"].
  const has = (flag: string): boolean => a.some((x, i) => (x === `--${flag}` && a[i + 1] !== 'false') || x === `--${flag}=true`);
  return { has, values };
}

function matches(o: KubeObject, name: RegExp): boolean {
  const l = labels(o);
  return name.test(o.metadata.name) || name.test(l['app.kubernetes.io/name'] ?? '') || name.test(l['app'] ?? '') || name.test(l['k8s-app'] ?? '');
}

/** Workloads (Deployments, DaemonSets) of a component, by name, the usual labels or namespace. */
function workloads(s: ClusterSnapshot, name: RegExp, namespace?: string): string[] {
  return [...s.deployments, ...s.daemonSets]
    .filter((o) => !o.metadata.name.startsWith('svclb-')) // servicelb's, named after the Service it serves
    .filter((o) => matches(o, name) || (namespace !== undefined && o.metadata.namespace === namespace))
    .map(ref);
}

const crdsOfGroup = (s: ClusterSnapshot, group: string): string[] => s.crds.map((c) => c.metadata.name).filter((n) => n.endsWith(`.${group}`));

const WIPE = 'wipe k3s as docs/migration.md says';

export function clusterFindings(s: ClusterSnapshot): Finding[] {
  const out: Finding[] = [];
  const add = (component: string, found: string[], why: string, todo: string) => {
    if (found.length > 0) out.push({ component, found: list(found), why, todo });
  };

  // --- k3s' own flags, as the node records them. k3s runs flannel, kube-proxy and kube-router
  // inside its own process: no DaemonSet, Lease or Pod shows them, only its command line does.
  for (const node of s.nodes) {
    const args = k3sNodeArgs(node);
    const name = node.metadata.name;
    if (args) {
      const backend = args.values('flannel-backend').at(-1);
      if (backend !== 'none') {
        add('flannel', [`node ${name} runs k3s with ${backend ? `--flannel-backend=${backend}` : 'no --flannel-backend (flannel is the default)'}`], 'flannel and Cilium would both be the CNI', 'set the k3s flag --flannel-backend=none (the NixOS module does), then wipe and reboot');
      }
      if (!args.has('disable-kube-proxy')) {
        add('kube-proxy', [`node ${name} runs k3s without --disable-kube-proxy (k3s embeds kube-proxy)`], "Cilium's kubeProxyReplacement needs kube-proxy gone: both would program Service rules", 'set the k3s flag --disable-kube-proxy, then wipe and reboot (a reboot clears its iptables rules)');
      }
      if (!args.has('disable-network-policy')) {
        add('k3s network policy', [`node ${name} runs k3s without --disable-network-policy`], "k3s' network policy controller (kube-router) fights Cilium over iptables", 'set the k3s flag --disable-network-policy');
      }
      const disabled = new Set([...args.values('disable'), ...args.values('no-deploy')].flatMap((v) => v.split(',')).map((v) => v.trim()));
      for (const addon of ['traefik', 'servicelb'] as const) {
        if (!disabled.has(addon)) {
          add(addon, [`node ${name} runs k3s without --disable ${addon}`], addon === 'traefik' ? 'Cilium ingress is the ingress controller' : 'Cilium LB-IPAM hands out LoadBalancer IPs; servicelb would grab them too', `set the k3s flag --disable ${addon}`);
        }
      }
    }
    const flannelNotes = Object.keys(annotations(node)).filter((k) => k.startsWith('flannel.alpha.coreos.com/'));
    if (flannelNotes.length > 0) {
      add('flannel', [`node ${name} carries flannel annotations (${list(flannelNotes, 2)})`], 'flannel ran on this node; its VXLAN link flannel.1 holds the port Cilium needs', `${WIPE}; the node registers anew without them`);
    }
  }
  add('flannel', s.daemonSets.filter((d) => matches(d, /flannel/)).map(ref), 'a second CNI beside Cilium', 'remove flannel (its manifests or Helm release), or wipe');
  add('kube-proxy', s.daemonSets.filter((d) => d.metadata.name === 'kube-proxy' || labels(d)['k8s-app'] === 'kube-proxy').map(ref), "Cilium's kubeProxyReplacement takes its place; both would program Service rules", 'remove the kube-proxy DaemonSet, or wipe; a reboot clears its iptables rules');

  // --- k3s' packaged add-ons
  const charts = s.helmCharts.filter((h) => h.metadata.namespace === 'kube-system');
  add('traefik', [...charts.filter((h) => /^traefik(-crd)?$/.test(h.metadata.name)).map(ref), ...s.deployments.filter((d) => d.metadata.namespace === 'kube-system' && matches(d, /^traefik$/)).map(ref)], 'Cilium ingress is the ingress controller; traefik would claim the same LoadBalancer and IngressClass', "start k3s with --disable traefik (k3s then removes its add-on), or wipe");
  add('servicelb', s.daemonSets.filter((d) => d.metadata.name.startsWith('svclb-')).map(ref), 'servicelb answers for LoadBalancer Services that Cilium LB-IPAM should announce', 'start k3s with --disable servicelb, or wipe');

  // --- the old stack's own components
  add('ingress-nginx', [...workloads(s, /ingress-nginx/, 'ingress-nginx'), ...s.ingressClasses.filter((c) => (c.spec as { controller?: string } | undefined)?.controller === 'k8s.io/ingress-nginx').map(ref)], 'Cilium ingress replaces it; two controllers fight over Ingress objects and the LAN VIP', `remove its Argo CD Application or Helm release, or ${WIPE}`);
  add('MetalLB', [...crdsOfGroup(s, 'metallb.io').map((n) => `CRD ${n}`), ...workloads(s, /^metallb/, 'metallb-system')], 'Cilium LB-IPAM and L2 announcements replace it; both would answer ARP for 192.168.0.240-250', `remove it, or ${WIPE}`);
  const acme = s.issuers.filter((i) => /letsencrypt/i.test((i.spec as { acme?: { server?: string } } | undefined)?.acme?.server ?? '')).map(ref);
  add('cert-manager', [...workloads(s, /^cert-manager/, 'cert-manager'), ...acme, ...(crdsOfGroup(s, 'cert-manager.io').length ? [`${crdsOfGroup(s, 'cert-manager.io').length} cert-manager.io CRDs`] : [])], "TLS now ends at Cloudflare (tunnel) or stays on the LAN; Let's Encrypt issuers would keep solving DNS-01 challenges with the old Cloudflare token", `remove it, or ${WIPE}`);
  add('external-dns', [...workloads(s, /^external-dns/, 'external-dns'), ...crdsOfGroup(s, 'externaldns.k8s.io').map((n) => `CRD ${n}`)], 'the daemon owns the DNS records now; external-dns would rewrite or delete them', `stop it before the cutover (scale it to 0 or ${WIPE}), then let the daemon adopt its records (cloudflare.adopt)`);
  const azure = s.secretStores.filter((st) => (st.spec as { provider?: Record<string, unknown> } | undefined)?.provider?.azurekv !== undefined).map((st) => `${ref(st)} (Azure Key Vault)`);
  add('external-secrets', [...workloads(s, /^external-secrets/, 'external-secrets'), ...azure, ...(crdsOfGroup(s, 'external-secrets.io').length ? [`${crdsOfGroup(s, 'external-secrets.io').length} external-secrets.io CRDs`] : [])], 'secrets now come from SOPS files decrypted by ksops; Azure Key Vault goes away', 'export the secrets into SOPS files first (docs/migration.md, check-repo), then remove it or wipe');

  // --- App of Apps: Applications no ApplicationSet made, directly or through their parents
  const loose = s.applications.filter((a) => !madeByApplicationSet(a, s.applications));
  const cascading = loose.filter((a) => ((a.metadata.finalizers as string[] | undefined) ?? []).some((f) => f.startsWith('resources-finalizer.argocd.argoproj.io')));
  add(
    'App of Apps',
    loose.map(ref),
    `the root ApplicationSet ${APPSET_NAMESPACE}/${APPSET_NAME} manages the apps now; hand-made Applications keep syncing the old tree`,
    cascading.length
      ? `wipe k3s; do not delete them with kubectl first: ${list(cascading.map((a) => a.metadata.name), 3)} carr${cascading.length === 1 ? 'ies' : 'y'} the resources finalizer, so deleting ${cascading.length === 1 ? 'it' : 'them'} deletes every app they deployed (and their PVCs)`
      : `remove them once the ApplicationSet serves the same apps, or ${WIPE}`,
  );

  // --- CRDs the Argo CD chart will install but that its release does not own. The bootstrap takes
  // over those without Helm ownership; one of another release it refuses, as helm does.
  const release = `${ARGOCD_RELEASE.namespace}/${ARGOCD_RELEASE.name}`;
  const chartCrds = s.crds.filter((c) => (ARGOCD_CHART_CRDS as readonly string[]).includes(c.metadata.name));
  const foreign = chartCrds.flatMap((c) => {
    const owner = otherReleaseOwner(annotations(c), ARGOCD_RELEASE);
    return owner ? [{ crd: c.metadata.name, ...owner }] : [];
  });
  const ours = (c: KubeObject) =>
    labels(c)['app.kubernetes.io/managed-by'] === 'Helm' && annotations(c)['meta.helm.sh/release-name'] === ARGOCD_RELEASE.name && annotations(c)['meta.helm.sh/release-namespace'] === ARGOCD_RELEASE.namespace;
  const unowned = chartCrds.filter((c) => !ours(c) && !foreign.some((f) => f.crd === c.metadata.name));
  add('Argo CD CRDs', unowned.map((c) => `CRD ${c.metadata.name}`), `they are not owned by the Helm release ${release}, so a plain helm install would refuse them`, 'nothing: the bootstrap takes them over (helm --take-ownership) and keeps their Applications');
  const uninstall = [...new Set(foreign.map((f) => `helm uninstall ${f.name} -n ${f.namespace}`))];
  add(
    'Argo CD CRDs',
    foreign.map((f) => `CRD ${f.crd} (Helm release ${f.namespace}/${f.name})`),
    `another Helm release owns them, and the bootstrap (release ${release}) refuses to take them from it`,
    `uninstall that release (${uninstall.join('; ')}) and make sure the CRDs no longer carry its meta.helm.sh annotations (a chart that keeps its CRDs leaves them), or ${WIPE}; do not delete the CRDs: that deletes every Application`,
  );
  return out;
}

/**
 * Whether an ApplicationSet made this Application, itself or through the Applications that made
 * it: an app of the new tree may be an Application that another one syncs (kube-prometheus-stack
 * under monitoring). Argo CD marks what an Application syncs with its tracking annotation
 * `<app>:<group>/<kind>:<namespace>/<name>` or, with label tracking, `app.kubernetes.io/instance:
 * <app>`; `<app>` is `<namespace>_<name>` outside Argo CD's own namespace.
 */
function madeByApplicationSet(app: KubeObject, apps: readonly KubeObject[], seen = new Set<KubeObject>()): boolean {
  if (((app.metadata.ownerReferences as { kind?: string }[] | undefined) ?? []).some((o) => o.kind === 'ApplicationSet')) return true;
  seen.add(app);
  const id = /^([^:]+):argoproj\.io\/Application:([^/]*)\/(.+)$/.exec(annotations(app)['argocd.argoproj.io/tracking-id'] ?? '');
  // Argo CD ignores a tracking id copied from another object.
  const tracked = id && id[3] === app.metadata.name && id[2] === (app.metadata.namespace ?? '') ? id[1] : labels(app)['app.kubernetes.io/instance'];
  if (!tracked) return false;
  const [namespace, name] = tracked.includes('_') ? tracked.split('_', 2) : [app.metadata.namespace, tracked];
  const parent = apps.find((a) => a.metadata.name === name && a.metadata.namespace === namespace);
  return parent !== undefined && !seen.has(parent) && madeByApplicationSet(parent, apps, seen);
}

/** The apps whose config the new tree keeps in /var/data/configs/<app> (the homelab-configs class). */
const APP_CONFIGS = ['plex', 'sonarr', 'radarr', 'prowlarr', 'overseerr', 'transmission'] as const;

/** kube-proxy's and flannel's chains in `iptables-save` output (not the kubelet's own KUBE-FIREWALL/-KUBELET-CANARY). */
const OLD_CHAINS = /^:(KUBE-(SERVICES|NODEPORTS|POSTROUTING|MARK-MASQ|SVC-|SEP-|EXT-|FW-|XLB-|PROXY-|EXTERNAL-SERVICES|FORWARD|ROUTER-|NWPLCY-|POD-FW-)[^ ]*|FLANNEL-[^ ]*)/;

export function hostFindings(h: HostSnapshot): Finding[] {
  const out: Finding[] = [];
  const links = (h.links ?? []).filter((l) => l === 'flannel.1' || l === 'cni0');
  if (links.length > 0) {
    out.push({
      component: 'flannel',
      found: `network link${links.length > 1 ? 's' : ''} ${links.join(', ')} on this host`,
      why: 'flannel.1 holds VXLAN port 8472 that Cilium needs (its datapath fails and pods are not created); cni0 is flannel\'s bridge',
      todo: 'reboot after the wipe (links live in kernel memory; nothing recreates them once flannel is off), or `ip link delete flannel.1` and `ip link delete cni0` as root',
    });
  }
  if (h.iptables !== undefined) {
    const chains = [...new Set(h.iptables.split('\n').map((l) => OLD_CHAINS.exec(l)?.[1]).filter((c): c is string => c !== undefined))];
    if (chains.length > 0) {
      const sample = [...new Set(chains.map((c) => c.replace(/-[A-Z0-9]{16}$/, '-*')))];
      out.push({
        component: 'iptables',
        found: `${chains.length} chain${chains.length > 1 ? 's' : ''} of kube-proxy, kube-router or flannel (${list(sample, 5)})`,
        why: "stale Service rules catch traffic before Cilium's eBPF datapath sees it",
        todo: 'reboot after the wipe (iptables rules live in kernel memory; with --disable-kube-proxy nothing recreates them)',
      });
    }
  }
  if (h.configs) {
    const { dir, entries } = h.configs;
    const old = APP_CONFIGS.filter((a) => entries.includes(`${a}-data`));
    if (old.length > 0) {
      out.push({
        component: 'app configs',
        found: `${list(old.map((a) => `${a}-data`))} in ${dir} (the old setup's names)`,
        why: `the new tree mounts ${dir}/<app>, so ${list(old)} would start empty`,
        todo: `with k3s stopped (docs/migration.md, step 5): ${old.map((a) => `sudo mv -T ${dir}/${a}-data ${dir}/${a}`).join('; ')}`,
      });
    }
  }
  return out;
}

export function formatFinding(f: Finding): string {
  return `${f.component}: found ${f.found}. Why it matters: ${f.why}. What to do: ${f.todo}.`;
}

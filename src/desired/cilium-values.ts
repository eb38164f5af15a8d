// Helm values for the Cilium chart, generated from settings. Every key here answers a fact in
// DESIGN.md ("Facts the generated values must respect"); the user's `cilium.values` are
// deep-merged on top, so any of them can still be changed or removed (null) on purpose.
import type { Settings } from '../settings/schema.ts';
import { fqdn } from '../settings/names.ts';
import { deepMerge, type JsonObject } from './merge.ts';

/** Where k3s keeps its CNI binaries and config, instead of /opt/cni/bin and /etc/cni/net.d. */
export const K3S_CNI_BIN_PATH = '/var/lib/rancher/k3s/data/cni';
export const K3S_CNI_CONF_PATH = '/var/lib/rancher/k3s/agent/etc/cni/net.d';

/** Hubble metrics exported for Prometheus (kube-prometheus-stack scrapes them once it runs). */
export const HUBBLE_METRICS = ['dns', 'drop', 'tcp', 'flow', 'port-distribution', 'icmp', 'httpV2'] as const;

/**
 * Grafana dashboards the chart ships as ConfigMaps in the release namespace (kube-system, which
 * exists before the monitoring namespace does), labelled the way kube-prometheus-stack's Grafana
 * sidecar looks for them (its default label, searched in every namespace by the GitOps tree).
 */
export const GRAFANA_DASHBOARD_LABEL = { label: 'grafana_dashboard', labelValue: '1' } as const;

/** The `hosts` entry whose name gives Hubble UI its Ingress (a label under `domain` or a full name). */
export const HUBBLE_UI_HOST = 'hubble';
export const INGRESS_CLASS = 'cilium';

/** Hubble UI's Ingress host: the `hubble` entry of the hosts table, if the settings have one. */
export function hubbleUiHost(settings: Settings): string | undefined {
  const want = fqdn(HUBBLE_UI_HOST, settings.domain);
  return settings.hosts.some((h) => fqdn(h.name, settings.domain) === want) ? want : undefined;
}

/** The annotation Cilium LB-IPAM reads to pin a Service's LoadBalancer IP. */
export const LB_IPAM_IPS_ANNOTATION = 'lbipam.cilium.io/ips';

/**
 * Cilium `devices` entries for the L2 interface regexes, when each one is a plain prefix or a
 * plain name ("^eth[0-9]+" -> "eth+", "^enp3s0$" -> "enp3s0"). Cilium only announces on the
 * devices it attaches to, so the two lists must agree; a regex that has no such form makes
 * this return undefined and Cilium's own device detection decides instead of a wrong guess.
 */
export function devicesFromInterfaces(interfaces: readonly string[]): string[] | undefined {
  const out: string[] = [];
  for (const re of interfaces) {
    // ^prefix followed by "any more characters" (or nothing more, unanchored at the end).
    const prefix = /^\^([A-Za-z0-9_-]+)(?:\[0-9\][+*]|\\d[+*]|\.[+*])?$/.exec(re);
    const exact = /^\^([A-Za-z0-9_-]+)\$$/.exec(re);
    if (exact?.[1]) out.push(exact[1]);
    else if (prefix?.[1]) out.push(`${prefix[1]}+`);
    else return undefined;
  }
  return [...new Set(out)];
}

/** The generated values, before the user's overrides. */
export function generatedCiliumValues(settings: Settings): JsonObject {
  const { apiServer, ingressIP, interfaces } = settings.network;
  const devices = devicesFromInterfaces(interfaces);
  const uiHost = hubbleUiHost(settings);
  return {
    // k3s runs with --disable-kube-proxy; without kube-proxy Cilium cannot reach the API through
    // the kubernetes Service, so it dials k3s' local load balancer (never a LAN IP).
    kubeProxyReplacement: true,
    k8sServiceHost: apiServer.host,
    k8sServicePort: apiServer.port,
    // L2 announcements hold one Lease per announced Service and renew it every few seconds;
    // Cilium's docs ask to raise the client rate limit for that.
    k8sClientRateLimit: { qps: 20, burst: 40 },
    ...(devices ? { devices } : {}),
    cni: { binPath: K3S_CNI_BIN_PATH, confPath: K3S_CNI_CONF_PATH },
    // The default cluster-pool (10.0.0.0/8) overlaps k3s' service CIDR 10.43.0.0/16; use the
    // podCIDRs k3s assigns to nodes instead.
    ipam: { mode: 'kubernetes' },
    // One node: a second replica would stay Pending forever. The metrics ports (agent and
    // operator) are what the GitOps tree's PodMonitors scrape, once kube-prometheus-stack exists.
    operator: { replicas: 1, prometheus: { enabled: true }, dashboards: { enabled: true, ...GRAFANA_DASHBOARD_LABEL } },
    prometheus: { enabled: true },
    dashboards: { enabled: true, ...GRAFANA_DASHBOARD_LABEL },
    l2announcements: { enabled: true },
    ingressController: {
      enabled: true,
      loadbalancerMode: 'shared',
      default: true,
      // Pinned, so DNS (which points at ingressIP) cannot drift with allocation order.
      service: { annotations: { [LB_IPAM_IPS_ANNOTATION]: ingressIP } },
    },
    // No serviceMonitor: it needs the Prometheus Operator CRDs, which do not exist until the
    // GitOps tree installs kube-prometheus-stack, and the install would fail before that.
    hubble: {
      enabled: true,
      relay: { enabled: true },
      metrics: { enabled: [...HUBBLE_METRICS], dashboards: { enabled: true, ...GRAFANA_DASHBOARD_LABEL } },
      // The UI on the shared ingress, at the `hubble` host of the settings (a local A record to the
      // ingress VIP); without such a host the UI still runs, for `cilium hubble ui` port-forwards.
      ui: {
        enabled: true,
        ...(uiHost ? { ingress: { enabled: true, className: INGRESS_CLASS, hosts: [uiHost] } } : {}),
      },
    },
  };
}

/** What is installed: generated values with `cilium.values` deep-merged over them. */
export function ciliumValues(settings: Settings): JsonObject {
  return deepMerge(generatedCiliumValues(settings), settings.cilium.values);
}

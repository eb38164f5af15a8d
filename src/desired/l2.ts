// The Cilium LB IPAM pool and L2 announcement policy, from settings. Pure.
import type { Settings } from '../settings/schema.ts';
import type { KubeObject } from '../steps/types.ts';
import { OWNER_LABEL } from '../adapters/kube.ts';

/** Fixed names: the pool is updated in place when its range changes, never replaced (a replaced pool would re-allocate every Service IP). */
export const POOL_NAME = 'homelab';
export const L2_POLICY_NAME = 'homelab';
export const POOL_KIND = 'CiliumLoadBalancerIPPool';
export const L2_POLICY_KIND = 'CiliumL2AnnouncementPolicy';
export const POOL_CRD = 'ciliumloadbalancerippools.cilium.io';
export const L2_POLICY_CRD = 'ciliuml2announcementpolicies.cilium.io';

/** What `render` (no discovery) assumes: pool v2 from Cilium 1.18, the L2 policy still v2alpha1. */
export const DEFAULT_POOL_API_VERSION = 'cilium.io/v2';
export const DEFAULT_L2_POLICY_API_VERSION = 'cilium.io/v2alpha1';

export interface L2ApiVersions {
  poolApiVersion: string;
  l2PolicyApiVersion: string;
}

export interface L2Desired extends L2ApiVersions {
  pool: KubeObject;
  policy: KubeObject;
}

/** The versions cilium-crds found by discovery, or the render defaults. */
export function l2ApiVersions(upstream: Record<string, unknown>): L2ApiVersions {
  const pick = (v: unknown, d: string) => (typeof v === 'string' && v.startsWith('cilium.io/') ? v : d);
  return {
    poolApiVersion: pick(upstream.poolApiVersion, DEFAULT_POOL_API_VERSION),
    l2PolicyApiVersion: pick(upstream.l2PolicyApiVersion, DEFAULT_L2_POLICY_API_VERSION),
  };
}

export function desiredL2(settings: Settings, versions: L2ApiVersions): L2Desired {
  const { start, stop } = settings.network.lbPool;
  const pool: KubeObject = {
    apiVersion: versions.poolApiVersion,
    kind: POOL_KIND,
    metadata: { name: POOL_NAME, labels: { ...OWNER_LABEL } },
    // v2 and v2alpha1 share this shape ({start, stop} blocks exist in both).
    spec: { blocks: [{ start, stop }] },
  };
  const policy: KubeObject = {
    apiVersion: versions.l2PolicyApiVersion,
    kind: L2_POLICY_KIND,
    metadata: { name: L2_POLICY_NAME, labels: { ...OWNER_LABEL } },
    spec: {
      // No nodeSelector: Cilium's docs exclude control-plane nodes, but a single-node k3s
      // cluster has only a control-plane node, which then would announce nothing.
      loadBalancerIPs: true,
      interfaces: [...settings.network.interfaces],
    },
  };
  return { ...versions, pool, policy };
}

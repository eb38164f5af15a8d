// One test per fact of DESIGN.md's "Facts the generated values must respect" (Cilium).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseSettings } from '../../src/settings/load.ts';
import type { SettingsInput } from '../../src/settings/schema.ts';
import { ciliumValues, devicesFromInterfaces, K3S_CNI_BIN_PATH, K3S_CNI_CONF_PATH } from '../../src/desired/cilium-values.ts';

const base: SettingsInput = {
  domain: 'example.org',
  network: { lbPool: { start: '192.168.0.240', stop: '192.168.0.250' }, ingressIP: '192.168.0.240' },
  gitops: { repoURL: 'https://github.com/example/homelab.git' },
};
const settings = (over: Partial<SettingsInput> = {}) => parseSettings({ ...base, ...over });
const values = (over: Partial<SettingsInput> = {}) => ciliumValues(settings(over)) as Record<string, any>;

test('kube-proxy replacement dials the k3s local load balancer 127.0.0.1:6444 by default', () => {
  const v = values();
  assert.equal(v.kubeProxyReplacement, true);
  assert.equal(v.k8sServiceHost, '127.0.0.1');
  assert.equal(v.k8sServicePort, 6444);
});

test('the API endpoint comes from settings network.apiServer', () => {
  const v = values({ network: { ...base.network, apiServer: { host: '127.0.0.1', port: 6443 } } });
  assert.equal(v.k8sServicePort, 6443);
});

test('CNI binaries and config live in the k3s paths', () => {
  const v = values();
  assert.equal(v.cni.binPath, '/var/lib/rancher/k3s/data/cni');
  assert.equal(v.cni.confPath, '/var/lib/rancher/k3s/agent/etc/cni/net.d');
  assert.equal(K3S_CNI_BIN_PATH, v.cni.binPath);
  assert.equal(K3S_CNI_CONF_PATH, v.cni.confPath);
});

test('IPAM uses the node podCIDRs k3s assigns, not cluster-pool 10.0.0.0/8', () => {
  assert.deepEqual(values().ipam, { mode: 'kubernetes' });
});

test('one operator replica on a single node', () => {
  assert.equal(values().operator.replicas, 1);
});

test('L2 announcements are enabled, with a raised client rate limit for their leases', () => {
  const v = values();
  assert.equal(v.l2announcements.enabled, true);
  assert.ok(v.k8sClientRateLimit.qps >= 10 && v.k8sClientRateLimit.burst >= v.k8sClientRateLimit.qps);
});

test('devices agree with the L2 interface regexes', () => {
  assert.deepEqual(values().devices, ['eth+', 'en+']);
  assert.deepEqual(values({ network: { ...base.network, interfaces: ['^enp3s0$'] } }).devices, ['enp3s0']);
  assert.deepEqual(devicesFromInterfaces(['^eth[0-9]+', '^eth\\d*', '^wlan0']), ['eth+', 'wlan0+']);
});

test('an interface regex with no Cilium device form leaves devices to auto-detection', () => {
  assert.equal(devicesFromInterfaces(['^(eth|wlan)0$']), undefined);
  assert.equal(devicesFromInterfaces(['eth0']), undefined, 'unanchored regexes match anywhere in the name');
  assert.equal('devices' in values({ network: { ...base.network, interfaces: ['^en.+', 'br[0-9]'] } }), false);
});

test('shared ingress is the default class and its VIP is pinned by lbipam.cilium.io/ips', () => {
  const ic = values().ingressController;
  assert.equal(ic.enabled, true);
  assert.equal(ic.loadbalancerMode, 'shared');
  assert.equal(ic.default, true);
  assert.deepEqual(ic.service.annotations, { 'lbipam.cilium.io/ips': '192.168.0.240' });
});

test('the pinned VIP follows settings network.ingressIP', () => {
  const v = values({ network: { ...base.network, ingressIP: '192.168.0.245' } });
  assert.equal(v.ingressController.service.annotations['lbipam.cilium.io/ips'], '192.168.0.245');
});

test('no externalIPs key (removed after Cilium 1.16)', () => {
  assert.equal('externalIPs' in values(), false);
});

test('Hubble relay and metrics are on', () => {
  const h = values().hubble;
  assert.equal(h.relay.enabled, true);
  assert.ok(Array.isArray(h.metrics.enabled));
  for (const m of ['dns', 'drop', 'tcp', 'flow', 'port-distribution', 'icmp', 'httpV2']) assert.ok(h.metrics.enabled.includes(m), m);
});

test('no Hubble serviceMonitor: the Prometheus Operator CRDs do not exist at bootstrap', () => {
  const h = values().hubble;
  assert.equal('serviceMonitor' in h.metrics, false);
  assert.equal(JSON.stringify(values()).includes('serviceMonitor'), false);
});

test('user overrides deep-merge over the generated values; null removes a key', () => {
  const v = values({
    cilium: {
      values: { hubble: { relay: { enabled: false }, ui: { enabled: true } }, operator: { replicas: 2 }, devices: null, k8sClientRateLimit: null },
    },
  });
  assert.equal(v.hubble.relay.enabled, false);
  assert.equal(v.hubble.ui.enabled, true);
  assert.deepEqual(v.hubble.metrics.enabled.length, 7, 'untouched siblings stay');
  assert.equal(v.operator.replicas, 2);
  assert.equal('devices' in v, false);
  assert.equal('k8sClientRateLimit' in v, false);
  assert.equal(v.kubeProxyReplacement, true);
});

test('the values are plain JSON (what helm stores and `helm get values` returns)', () => {
  const v = values();
  assert.deepEqual(JSON.parse(JSON.stringify(v)), v);
});

test('agent and operator expose metrics for the GitOps tree PodMonitors, without ServiceMonitors', () => {
  const v = values();
  assert.equal(v.prometheus.enabled, true);
  assert.equal(v.operator.prometheus.enabled, true);
  assert.equal(v.prometheus.serviceMonitor, undefined);
  assert.equal(v.operator.prometheus.serviceMonitor, undefined);
});

test('the chart ships the agent, operator and Hubble dashboards for Grafana\'s sidecar (label grafana_dashboard=1)', () => {
  const v = values();
  for (const d of [v.dashboards, v.operator.dashboards, v.hubble.metrics.dashboards]) {
    assert.deepEqual(d, { enabled: true, label: 'grafana_dashboard', labelValue: '1' });
  }
  // No namespace: the ConfigMaps go to the release namespace, which exists at install time
  // (monitoring does not yet); the sidecar searches every namespace.
  assert.equal('namespace' in v.dashboards, false);
});

test('Hubble UI runs, with an Ingress on the cilium class only for a `hubble` host in the hosts table', () => {
  assert.deepEqual(values().hubble.ui, { enabled: true });
  for (const name of ['hubble', 'hubble.example.org']) {
    const v = values({ hosts: [{ name, access: 'local' }] });
    assert.deepEqual(v.hubble.ui.ingress, { enabled: true, className: 'cilium', hosts: ['hubble.example.org'] });
  }
  assert.equal(values({ hosts: [{ name: 'grafana', access: 'local' }] }).hubble.ui.ingress, undefined);
});

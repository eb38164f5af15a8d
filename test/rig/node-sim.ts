// What turns the bare apiserver into something close to a one-node k3s: kube-controller-manager
// (Deployments make ReplicaSets, ReplicaSets/DaemonSets/StatefulSets/Jobs make Pods, namespaces
// are emptied and deleted, owned objects are garbage-collected), kube-scheduler (Pods get a
// node), and kwok, which plays the kubelet of one fake node: scheduled Pods become Running and
// Ready, Job Pods complete, deleted Pods go away. No container ever runs.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { binPath } from './binaries.ts';
import { kubeJson, type KubeEndpoint } from './kube-http.ts';
import { spawnTied, type TiedProcess } from './processes.ts';

/** Name of the simulated node; k3s names a node after its host. */
export const NODE_NAME = 'rig-node';
/** Labels a k3s server node carries (the ones charts select on: os, arch, hostname, role). */
export const NODE_LABELS: Readonly<Record<string, string>> = {
  'kubernetes.io/os': 'linux',
  'kubernetes.io/arch': 'amd64',
  'kubernetes.io/hostname': NODE_NAME,
  'node-role.kubernetes.io/control-plane': 'true',
  'node-role.kubernetes.io/master': 'true',
};
const KWOK_NODE_ANNOTATION = 'kwok.x-k8s.io/node';
/** A Pod with this annotation runs but never turns Ready: a crash-looping workload, on purpose. */
export const NOT_READY_ANNOTATION = 'rig.homelab-bootstrap/not-ready';
/** How long a scheduled Pod takes to start (a Go duration, e.g. "5s"); without it, START_MS. */
export const START_AFTER_ANNOTATION = 'rig.homelab-bootstrap/start-after';
/** A container start without an image pull: long enough that a readiness wait sees the Pod not Ready first. */
export const START_MS = 1000;

// Only what the charts and the daemon rely on; the rest of kube-controller-manager (node
// lifecycle, endpoints, CSR signing, token secrets…) would cost start-up time for nothing here.
const CONTROLLERS = [
  'deployment-controller',
  'replicaset-controller',
  'daemonset-controller',
  'statefulset-controller',
  'job-controller',
  'garbage-collector-controller',
  'namespace-controller',
  'serviceaccount-controller',
];

export interface NodeSimIdentity {
  /** Kubeconfig of an identity of its own, so the audit counts of the test user stay clean. */
  kubeconfig: string;
}

export interface NodeSim {
  procs: TiedProcess[];
  pids: { controllerManager: number; scheduler: number; kwok: number };
}

/**
 * Starts the three processes (each with its own kubeconfig) and registers the fake node.
 * Resolves once the node is Ready and the controller-manager is working (it has made the
 * `default` ServiceAccount), so a Deployment created next gets its Pods without delay.
 */
export async function startNodeSim(opts: {
  dir: string;
  rig: KubeEndpoint;
  saKeyFile: string;
  kubeconfigs: { controllerManager: string; scheduler: string; kwok: string };
  timeoutMs: number;
  track: (p: TiedProcess) => void;
}): Promise<NodeSim> {
  const { dir, rig } = opts;
  const stages = join(dir, 'kwok-stages.yaml');
  writeFileSync(stages, KWOK_STAGES.map((s) => stringify(s)).join('---\n'));

  const kcm = spawnTied('kube-controller-manager', binPath('kube-controller-manager'), [
    `--kubeconfig=${opts.kubeconfigs.controllerManager}`,
    `--controllers=${CONTROLLERS.join(',')}`,
    `--service-account-private-key-file=${opts.saKeyFile}`,
    '--leader-elect=false',
    // Nothing scrapes it: no port to pick, no serving cert to make.
    '--secure-port=0',
    // A namespace or an orphan is cleaned up in a second rather than in the default 5 s + jitter.
    '--concurrent-gc-syncs=5',
    '--profiling=false',
    '-v=1',
  ], join(dir, 'kube-controller-manager.log'));
  opts.track(kcm);
  const scheduler = spawnTied('kube-scheduler', binPath('kube-scheduler'), [
    `--kubeconfig=${opts.kubeconfigs.scheduler}`,
    '--leader-elect=false',
    '--secure-port=0',
    '--profiling=false',
    '-v=1',
  ], join(dir, 'kube-scheduler.log'));
  opts.track(scheduler);
  const kwok = spawnTied('kwok', binPath('kwok'), [
    `--kubeconfig=${opts.kubeconfigs.kwok}`,
    `--config=${stages}`,
    '--manage-all-nodes=false',
    `--manage-nodes-with-annotation-selector=${KWOK_NODE_ANNOTATION}=fake`,
    '--node-ip=10.0.2.15',
    '--cidr=10.42.0.0/24',
  ], join(dir, 'kwok.log'));
  opts.track(kwok);

  await kubeJson(rig, 'POST', '/api/v1/nodes', {
    body: {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: { name: NODE_NAME, labels: NODE_LABELS, annotations: { [KWOK_NODE_ANNOTATION]: 'fake' } },
      // k3s's node IPAM hands out a podCIDR; Cilium's ipam.mode=kubernetes reads it.
      spec: { podCIDR: '10.42.0.0/24', podCIDRs: ['10.42.0.0/24'] },
    },
  });

  const deadline = performance.now() + opts.timeoutMs;
  const procs = [kcm, scheduler, kwok];
  for (;;) {
    for (const p of procs) if (!p.isRunning()) throw new Error(`${p.name} exited during startup (code ${p.child.exitCode}, signal ${p.child.signalCode})`);
    const node = await kubeJson<{ status?: { conditions?: { type: string; status: string }[] } }>(rig, 'GET', `/api/v1/nodes/${NODE_NAME}`);
    const nodeReady = node.json?.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true;
    const sa = await kubeJson(rig, 'GET', '/api/v1/namespaces/default/serviceaccounts/default', { allow: [404] });
    if (nodeReady && sa.status === 200) break;
    if (performance.now() > deadline) {
      throw new Error(`the simulated node was not ready within ${opts.timeoutMs} ms (node Ready: ${nodeReady}, controller-manager working: ${sa.status === 200})`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { procs, pids: { controllerManager: kcm.pid, scheduler: scheduler.pid, kwok: kwok.pid } };
}

// ---- kwok stages ------------------------------------------------------------------------------
// kwok does nothing without Stages (it has no built-in defaults when run on its own). These are
// the transitions a kubelet makes that the daemon and the charts can observe: the node reports
// Ready with room for everything; a scheduled Pod starts and turns Ready (its init containers
// completed), a Job's Pod then succeeds, a deleted Pod is removed. Templates use kwok's
// functions (Now, NodeIP, PodIPWith…); `.` is the object.

const notDeleting = { key: '.metadata.deletionTimestamp', operator: 'DoesNotExist' };
const marked = (op: 'Exists' | 'DoesNotExist') => ({ key: `.metadata.annotations["${NOT_READY_ANNOTATION}"]`, operator: op });

const podRunning = (ready: boolean) => `
{{ $now := Now }}
conditions:
- {type: PodScheduled, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "${ready ? 'True' : 'False'}", lastTransitionTime: {{ $now | Quote }}}
- {type: Ready, status: "${ready ? 'True' : 'False'}", lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: ${ready}
  started: true
  restartCount: 0
  state: {running: {startedAt: {{ $now | Quote }}}}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: true
  restartCount: 0
  state: {terminated: {exitCode: 0, reason: Completed, startedAt: {{ $now | Quote }}, finishedAt: {{ $now | Quote }}}}
{{ end }}
hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
phase: Running
startTime: {{ $now | Quote }}
`;

const KWOK_STAGES = [
  {
    apiVersion: 'kwok.x-k8s.io/v1alpha1',
    kind: 'Stage',
    metadata: { name: 'node-ready' },
    spec: {
      resourceRef: { apiGroup: 'v1', kind: 'Node' },
      selector: { matchExpressions: [{ key: '.status.conditions.[] | select( .type == "Ready" ) | .status', operator: 'NotIn', values: ['True'] }] },
      next: {
        statusTemplate: `
{{ $now := Now }}
conditions:
{{ range $t := list "MemoryPressure" "DiskPressure" "PIDPressure" "NetworkUnavailable" }}
- {type: {{ $t }}, status: "False", reason: KwokSimulated, lastHeartbeatTime: {{ $now | Quote }}, lastTransitionTime: {{ $now | Quote }}}
{{ end }}
- {type: Ready, status: "True", reason: KubeletReady, message: "simulated by kwok", lastHeartbeatTime: {{ $now | Quote }}, lastTransitionTime: {{ $now | Quote }}}
addresses:
- {type: InternalIP, address: {{ NodeIP | Quote }}}
- {type: Hostname, address: {{ .metadata.name | Quote }}}
capacity: {cpu: "16", memory: 64Gi, pods: "250", ephemeral-storage: 500Gi}
allocatable: {cpu: "16", memory: 64Gi, pods: "250", ephemeral-storage: 500Gi}
nodeInfo:
  architecture: amd64
  operatingSystem: linux
  osImage: "NixOS (simulated by kwok)"
  kernelVersion: "6.12.0"
  kubeletVersion: "v1.36.3+k3s1"
  containerRuntimeVersion: "containerd://2.1.5-k3s1"
  bootID: ""
  machineID: ""
  systemUUID: ""
phase: Running
`,
      },
    },
  },
  {
    apiVersion: 'kwok.x-k8s.io/v1alpha1',
    kind: 'Stage',
    metadata: { name: 'pod-ready' },
    spec: {
      resourceRef: { apiGroup: 'v1', kind: 'Pod' },
      selector: { matchExpressions: [notDeleting, marked('DoesNotExist'), { key: '.status.phase', operator: 'In', values: ['Pending'] }] },
      delay: { durationMilliseconds: START_MS, durationFrom: { jq: { expression: `.metadata.annotations["${START_AFTER_ANNOTATION}"]` } } },
      next: { statusTemplate: podRunning(true) },
    },
  },
  {
    apiVersion: 'kwok.x-k8s.io/v1alpha1',
    kind: 'Stage',
    metadata: { name: 'pod-running-not-ready' },
    spec: {
      resourceRef: { apiGroup: 'v1', kind: 'Pod' },
      selector: { matchExpressions: [notDeleting, marked('Exists'), { key: '.status.phase', operator: 'In', values: ['Pending'] }] },
      next: { statusTemplate: podRunning(false) },
    },
  },
  {
    apiVersion: 'kwok.x-k8s.io/v1alpha1',
    kind: 'Stage',
    metadata: { name: 'pod-complete' },
    spec: {
      resourceRef: { apiGroup: 'v1', kind: 'Pod' },
      selector: {
        matchExpressions: [
          notDeleting,
          { key: '.status.phase', operator: 'In', values: ['Running'] },
          { key: '.metadata.ownerReferences.[].kind', operator: 'In', values: ['Job'] },
        ],
      },
      next: {
        statusTemplate: `
{{ $now := Now }}
conditions:
- {type: Ready, status: "False", reason: PodCompleted, lastTransitionTime: {{ $now | Quote }}}
- {type: ContainersReady, status: "False", reason: PodCompleted, lastTransitionTime: {{ $now | Quote }}}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  ready: false
  started: false
  restartCount: 0
  state: {terminated: {exitCode: 0, reason: Completed, startedAt: {{ $now | Quote }}, finishedAt: {{ $now | Quote }}}}
{{ end }}
phase: Succeeded
`,
      },
    },
  },
  {
    apiVersion: 'kwok.x-k8s.io/v1alpha1',
    kind: 'Stage',
    metadata: { name: 'pod-delete' },
    spec: {
      resourceRef: { apiGroup: 'v1', kind: 'Pod' },
      selector: { matchExpressions: [{ key: '.metadata.deletionTimestamp', operator: 'Exists' }] },
      // A kubelet removes finalizers it owns (the Job controller's tracking one waits for that) and then the Pod.
      next: { finalizers: { empty: true }, delete: true },
    },
  },
];

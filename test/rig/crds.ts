// Real CRDs, installed the way the daemon installs things (server-side apply), and a stand-in
// for cilium-operator, which registers its CRDs at runtime some time after the chart is installed.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { sharedDir } from './charts.ts';
import type { ControlPlane } from './control-plane.ts';
import { endpointFromKubeconfig, kubeJson, type KubeEndpoint } from './kube-http.ts';

/** The CRDs of Cilium, Argo CD and the Prometheus Operator, shared beside the repository. */
export const sharedCrdsDir = join(sharedDir, 'crds');
export const CILIUM_CRDS = ['ciliumloadbalancerippools.cilium.io', 'ciliuml2announcementpolicies.cilium.io'] as const;

/** A kubeconfig path (its user makes the requests), or a control plane (its rig user does). */
export type CrdTarget = string | Pick<ControlPlane, 'rig'>;

const CRD_PATH = '/apis/apiextensions.k8s.io/v1/customresourcedefinitions';
const FIELD_MANAGER = 'hb-test-rig';

interface CrdDoc {
  name: string;
  /** The document's own text: the apiserver parses it, which is much faster than doing it in JS for these multi-megabyte files. */
  yaml: string;
}

/** Server-side applies every CRD in the given files or directories (searched recursively); returns their names. */
export async function installCrds(target: CrdTarget, source: string | string[]): Promise<string[]> {
  const ep = endpointOf(target);
  const docs = crdFiles(source).flatMap(readCrdDocs);
  // Two at a time: all fifteen multi-megabyte applies at once only queue up on two cores and risk timeouts.
  const queue = docs.slice();
  const worker = async () => {
    for (let doc = queue.shift(); doc; doc = queue.shift()) {
      await kubeJson(ep, 'PATCH', `${CRD_PATH}/${doc.name}?fieldManager=${FIELD_MANAGER}&force=true`, {
        body: doc.yaml,
        contentType: 'application/apply-patch+yaml',
        timeoutMs: 60_000,
      });
    }
  };
  await Promise.all([worker(), worker()]);
  return docs.map((d) => d.name);
}

/** Names of the CRDs in the given files or directories, without touching a cluster. */
export function crdNames(source: string | string[]): string[] {
  return crdFiles(source).flatMap(readCrdDocs).map((d) => d.name);
}

/** Resolves once every named CRD exists with Established=True; missing ones are waited for, not an error. */
export async function waitEstablished(target: CrdTarget, names: readonly string[], timeoutMs = 30_000): Promise<void> {
  const ep = endpointOf(target);
  const deadline = performance.now() + timeoutMs;
  const pending = new Set(names);
  for (;;) {
    // Polling the CRDs themselves would fetch megabytes a round and slow the apiserver it waits
    // for; discovery lists a CRD only once it is Established, and is small.
    const served = await servedResources(ep, new Set([...pending].map(groupOf)));
    for (const name of pending) if (served.has(name) && (await established(ep, name))) pending.delete(name);
    if (pending.size === 0) return;
    if (performance.now() > deadline) throw new Error(`CRDs not Established within ${timeoutMs} ms: ${[...pending].join(', ')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function isEstablished(target: CrdTarget, name: string): Promise<boolean> {
  return established(endpointOf(target), name);
}

async function established(ep: KubeEndpoint, name: string): Promise<boolean> {
  const res = await kubeJson<{ status?: { conditions?: { type: string; status: string }[] } }>(ep, 'GET', `${CRD_PATH}/${name}`, { allow: [404] });
  return res.status === 200 && res.json?.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True') === true;
}

function groupOf(crdName: string): string {
  return crdName.slice(crdName.indexOf('.') + 1);
}

/** `plural.group` of every resource that discovery serves in the given groups. */
async function servedResources(ep: KubeEndpoint, groups: Set<string>): Promise<Set<string>> {
  const served = new Set<string>();
  for (const group of groups) {
    const g = await kubeJson<{ versions?: { version: string }[] }>(ep, 'GET', `/apis/${group}`, { allow: [404, 503] });
    if (g.status !== 200) continue;
    for (const { version } of g.json?.versions ?? []) {
      const v = await kubeJson<{ resources?: { name: string }[] }>(ep, 'GET', `/apis/${group}/${version}`, { allow: [404, 503] });
      for (const r of v.status === 200 ? (v.json?.resources ?? []) : []) if (!r.name.includes('/')) served.add(`${r.name}.${group}`);
    }
  }
  return served;
}

export interface OperatorPlay {
  /** Settles after the CRDs are applied (with their names), or rejects if that failed. */
  done: Promise<string[]>;
  /** Stops a play whose delay has not run out yet; `done` then resolves with no names. */
  cancel(): void;
}

/**
 * Plays cilium-operator: applies the Cilium CRDs from the shared folder `delayMs` after the call,
 * or, with `whenRunning`, `delayMs` after the chart's cilium-operator Deployment has a Ready Pod
 * (needs a rig with controllers), as the real operator registers them once it runs.
 */
export function playCiliumOperator(target: CrdTarget, delayMs: number, opts: { whenRunning?: boolean } = {}): OperatorPlay {
  const ep = endpointOf(target);
  let cancelled = false;
  let cancel = () => {};
  const done = new Promise<string[]>((resolvePlay, reject) => {
    let timer: NodeJS.Timeout | undefined;
    const install = () => {
      timer = setTimeout(() => (cancelled ? resolvePlay([]) : installCrds(target, join(sharedCrdsDir, 'cilium')).then(resolvePlay, reject)), delayMs);
    };
    const poll = async () => {
      while (!cancelled) {
        const dep = await kubeJson<{ status?: { availableReplicas?: number } }>(ep, 'GET', '/apis/apps/v1/namespaces/kube-system/deployments/cilium-operator', { allow: [404] }).catch(() => undefined);
        if ((dep?.json?.status?.availableReplicas ?? 0) > 0) return install();
        await new Promise((r) => setTimeout(r, 250));
      }
      resolvePlay([]);
    };
    if (opts.whenRunning) void poll();
    else install();
    cancel = () => {
      cancelled = true;
      clearTimeout(timer);
      resolvePlay([]);
    };
  });
  return { done, cancel };
}

function endpointOf(target: CrdTarget): KubeEndpoint {
  return typeof target === 'string' ? endpointFromKubeconfig(target) : target.rig;
}

function crdFiles(source: string | string[]): string[] {
  const out: string[] = [];
  const visit = (p: string) => {
    if (statSync(p).isDirectory()) {
      for (const entry of readdirSync(p).sort()) {
        const child = join(p, entry);
        if (statSync(child).isDirectory() || /\.(ya?ml|json)$/.test(entry)) visit(child);
      }
    } else out.push(p);
  };
  for (const p of Array.isArray(source) ? source : [source]) visit(resolve(p));
  if (out.length === 0) throw new Error(`no CRD files in ${String(source)}`);
  return out;
}

function readCrdDocs(file: string): CrdDoc[] {
  const text = readFileSync(file, 'utf8');
  const docs = file.endsWith('.json') ? [text] : text.split(/^---[ \t]*$/m);
  return docs
    .filter((d) => /^\s*[^#\s]/m.test(d))
    .map((yaml) => {
      if (!/^kind:[ \t]*["']?CustomResourceDefinition["']?[ \t]*$/m.test(yaml) && !/"kind"\s*:\s*"CustomResourceDefinition"/.test(yaml)) {
        throw new Error(`${file}: a document that is not a CustomResourceDefinition`);
      }
      const name = metadataName(yaml);
      if (!name) throw new Error(`${file}: a CustomResourceDefinition without metadata.name`);
      return { name, yaml };
    });
}

/** metadata.name read from the text, without a YAML parser (see CrdDoc). */
function metadataName(doc: string): string | undefined {
  const json = /^\s*\{/.test(doc) ? (JSON.parse(doc) as { metadata?: { name?: string } }) : undefined;
  if (json) return json.metadata?.name;
  const lines = doc.split('\n');
  const start = lines.findIndex((l) => /^metadata:\s*$/.test(l));
  if (start < 0) return undefined;
  let indent: number | undefined;
  for (const line of lines.slice(start + 1)) {
    if (line.trim() === '' || line.trimStart().startsWith('#')) continue;
    const lead = line.length - line.trimStart().length;
    if (lead === 0) return undefined;
    indent ??= lead;
    const m = lead === indent ? /^\s+name:\s*["']?([^"'\s#]+)/.exec(line) : null;
    if (m) return m[1];
  }
  return undefined;
}

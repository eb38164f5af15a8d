// `homelab-bootstrap doctor`: reads the cluster (and this host) for the old stack SPEC.md removes
// and for leftovers that break the bootstrap, and says what it found. Read-only.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { OWNER_LABEL, type KubeClient } from '../adapters/kube.ts';
import { APPSET_API_VERSION, APPSET_NAME, APPSET_NAMESPACE } from '../desired/appset.ts';
import { clusterFindings, formatFinding, hostFindings, type Finding } from './findings.ts';
import { readCluster } from './read-cluster.ts';
import { readHost, type HostReadOptions } from './read-host.ts';

/** The cluster could not be checked at all; the message says why. */
export class DoctorError extends Error {
  override name = 'DoctorError';
}

export interface DoctorOptions {
  /** Also look at this host (links, iptables); off when the kubeconfig points at another machine. */
  host: boolean;
  hostOptions?: HostReadOptions;
  /** How long to wait for /readyz before giving up (k3s may be starting). */
  readyzWaitMs?: number;
}

export interface DoctorReport {
  findings: Finding[];
  /** What could not be checked, and how to check it by hand. */
  notes: string[];
}

/** Polls /readyz for at most `waitMs`; throws DoctorError with the last reason. */
export async function waitApi(kube: KubeClient, waitMs: number): Promise<void> {
  const deadline = performance.now() + waitMs;
  for (let attempt = 1; ; attempt++) {
    let detail: string;
    try {
      const s = await kube.readyzStatus(AbortSignal.timeout(Math.round(Math.max(1000, Math.min(5000, deadline - performance.now())))));
      if (s.ready) return;
      detail = s.detail;
    } catch (e) {
      // readyzStatus reports an unreachable server as not ready; what it throws (a kubeconfig that
      // cannot be read, credentials refused) will not pass by waiting, except our own timeout.
      if ((e as Error).name !== 'TimeoutError' && (e as Error).name !== 'AbortError') throw new DoctorError(`cannot check the cluster: ${(e as Error).message}`);
      detail = 'no answer (timed out)';
    }
    if (performance.now() >= deadline) {
      throw new DoctorError(`cannot check the cluster: the API server ${kube.server} is not ready after ${Math.round(waitMs / 1000)} s (${attempt} tries; last: ${detail}); is k3s running?`);
    }
    await sleep(Math.round(Math.min(1000, Math.max(0, deadline - performance.now()))));
  }
}

export async function runDoctor(kube: KubeClient, opts: DoctorOptions): Promise<DoctorReport> {
  await waitApi(kube, opts.readyzWaitMs ?? 10_000);
  let findings: Finding[];
  try {
    findings = clusterFindings(await readCluster(kube));
  } catch (e) {
    throw new DoctorError(`cannot check the cluster: ${(e as Error).message}`);
  }
  const notes: string[] = [];
  if (opts.host) {
    const host = await readHost(opts.hostOptions);
    findings.push(...hostFindings(host));
    notes.push(...host.notes);
  }
  return { findings, notes };
}

/**
 * Whether this cluster was bootstrapped already: the root ApplicationSet exists with our label.
 * One read, which 404s both when the kind is not served and when the object is absent.
 */
export async function bootstrapped(kube: KubeClient, signal?: AbortSignal): Promise<boolean> {
  const res = await kube.raw('GET', `/apis/${APPSET_API_VERSION}/namespaces/${APPSET_NAMESPACE}/applicationsets/${APPSET_NAME}`, { signal, timeoutMs: 15_000 });
  if (res.status !== 200) return false;
  const labels = (JSON.parse(res.text) as { metadata?: { labels?: Record<string, string> } }).metadata?.labels ?? {};
  return Object.entries(OWNER_LABEL).every(([k, v]) => labels[k] === v);
}

/**
 * doctor's findings as preflight warnings, for plan and apply. Only before the first bootstrap
 * completes (no root ApplicationSet yet): that is when leftovers break things, and it keeps a
 * no-op apply on a bootstrapped cluster at one extra read. Never fails the step.
 */
export async function warnLeftovers(kube: KubeClient, log: Logger, signal?: AbortSignal): Promise<void> {
  try {
    if (await bootstrapped(kube, signal)) return;
    const findings = clusterFindings(await readCluster(kube, signal));
    const host = await readHost();
    findings.push(...hostFindings(host));
    for (const f of findings) log.warn({ leftover: f.component }, `old stack: ${formatFinding(f)}`);
    for (const n of host.notes) log.info(`old stack: ${n}`);
    if (findings.length > 0) log.warn(`${findings.length} leftover(s) of the old stack; \`homelab-bootstrap doctor\` lists them again (docs/migration.md)`);
  } catch (e) {
    if (signal?.aborted) throw e;
    log.warn({ err: (e as Error).message }, `could not look for leftovers of the old stack: ${(e as Error).message}`);
  }
}

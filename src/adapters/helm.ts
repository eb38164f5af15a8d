// Thin adapter over the real `helm` binary (Helm 3 >= 3.17 or Helm 4) via execa. It runs helm
// only to write releases (and, to check before taking objects over, `helm template`) and parses
// its failures; releases are read without helm (helm-storage.ts), and what to do (skip, recover,
// upgrade, take over) is decided in steps/helm-release.ts.
//
// helm runs with a minimal environment (extendEnv: false): our environment may hold things
// that are none of helm's business, and helm reads a lot of variables (KUBECONFIG, HELM_*,
// proxies) that would make a run depend on the shell it came from. Values go in on stdin,
// never in argv, and the kubeconfig is a path.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { parseAllDocuments } from 'yaml';
import { isTransientMessage, TransientError } from '../engine/errors.ts';
import type { ChartRef } from '../settings/schema.ts';
import type { HelmReleaseSpec } from '../steps/types.ts';

export interface HelmWriteOptions {
  /** helm's own --timeout (hooks, rollback waits); helm is never run with --wait. */
  timeoutMs: number;
  signal?: AbortSignal;
  /** Adopt existing objects whatever their ownership (--take-ownership, Helm >= 3.17). */
  takeOwnership?: boolean;
  /** Server-side apply (Helm 4) overrides other field managers (--force-conflicts). */
  forceConflicts?: boolean;
}

export interface HelmOptions {
  /** The helm binary; default $HELM_BIN, else `helm` from PATH. */
  bin?: string;
  /** Where helm keeps its cache/config/data; default $STATE_DIRECTORY/helm, else a temp dir. */
  home?: string;
}

export class HelmError extends Error {
  override name = 'HelmError';
  readonly command: string;
  readonly exitCode: number | undefined;
  readonly stderr: string;
  constructor(command: string, exitCode: number | undefined, stderr: string) {
    super(`helm ${command} failed${exitCode === undefined ? '' : ` (exit ${exitCode})`}: ${stderr || 'no output'}`);
    this.command = command;
    this.exitCode = exitCode;
    this.stderr = stderr;
  }
}

/** helm's wording when the last revision is pending-* (a killed helm left it). */
export const OPERATION_IN_PROGRESS = 'another operation (install/upgrade/rollback) is in progress';

/** The apiserver restarting under k3s, or a killed run's lock (the next attempt recovers the release). */
export function isTransientHelmError(stderr: string): boolean {
  return isTransientMessage(stderr) || stderr.includes(OPERATION_IN_PROGRESS);
}

/** An existing object helm would not adopt into a release. */
export interface OwnershipConflict {
  /** As helm names it: `CustomResourceDefinition "applications.argoproj.io"`. */
  object: string;
  /** The release that owns it, as far as helm's message says (a field it does not name matches ours); undefined when no release does. */
  owner?: { name?: string; namespace?: string };
}

/**
 * helm's refusal to adopt an existing object ("... exists and cannot be imported into the
 * current release: invalid ownership metadata; ..."), or undefined for any other failure.
 */
export function ownershipConflict(stderr: string): OwnershipConflict | undefined {
  const m = /(\S+ "[^"]*")(?: in namespace "[^"]*")? exists and cannot be imported into the current release: invalid ownership metadata(.*)/s.exec(stderr);
  if (!m) return undefined;
  const current = (key: string) => new RegExp(`key "meta\\.helm\\.sh/${key}" must equal "[^"]*": current value is "([^"]*)"`).exec(m[2]!)?.[1];
  const name = current('release-name');
  const namespace = current('release-namespace');
  // Annotated for a release of this name but in another namespace is another release too.
  if (name === undefined && namespace === undefined) return { object: m[1]! };
  return { object: m[1]!, owner: { ...(name !== undefined ? { name } : {}), ...(namespace !== undefined ? { namespace } : {}) } };
}

/**
 * The field managers a server-side apply conflict names in a Helm 4 failure ("Apply failed with
 * 1 conflict: conflict with \"kubectl-edit\" using apps/v1: .spec.replicas"); undefined for any
 * other failure.
 */
export function applyConflicts(stderr: string): string[] | undefined {
  if (!/Apply failed with \d+ conflicts?/.test(stderr)) return undefined;
  return [...new Set([...stderr.matchAll(/conflicts? with "([^"]+)"/g)].map((m) => m[1]!))];
}

/** An object of a rendered chart, by identity. */
export interface ManifestObject {
  apiVersion: string;
  kind: string;
  name: string;
  /** The release namespace for namespaced objects that name none; cluster-scoped ones ignore it. */
  namespace: string;
}

/** The objects of a multi-document manifest (helm's output), without their bodies. */
export function manifestObjects(manifest: string, defaultNamespace: string): ManifestObject[] {
  const out: ManifestObject[] = [];
  for (const doc of parseAllDocuments(manifest)) {
    const o = doc.toJS() as { apiVersion?: unknown; kind?: unknown; metadata?: { name?: unknown; namespace?: unknown } } | null;
    if (!o || typeof o.apiVersion !== 'string' || typeof o.kind !== 'string' || typeof o.metadata?.name !== 'string') continue;
    out.push({ apiVersion: o.apiVersion, kind: o.kind, name: o.metadata.name, namespace: typeof o.metadata.namespace === 'string' ? o.metadata.namespace : defaultNamespace });
  }
  return out;
}

let tempHome: string | undefined;

/**
 * Under systemd, $STATE_DIRECTORY/helm (the first of StateDirectory='s list), so the repository
 * index cache survives reboots. Elsewhere a private temp dir for this process: a fixed name in
 * a shared /tmp could be planted by another user.
 */
function defaultHome(): string {
  const state = process.env.STATE_DIRECTORY?.split(':')[0];
  if (state) return join(state, 'helm');
  if (!tempHome) {
    const dir = mkdtempSync(join(tmpdir(), 'homelab-bootstrap-helm-'));
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    tempHome = dir;
  }
  return tempHome;
}

/** The chart argument and its source flags for `helm upgrade --install`. */
export function chartArgs(chart: ChartRef): string[] {
  if ('path' in chart) return [chart.path];
  // OCI registries are addressed by reference, not by --repo.
  if (chart.repo.startsWith('oci://')) return [`${chart.repo.replace(/\/+$/, '')}/${chart.chart}`, '--version', chart.version];
  return [chart.chart, '--repo', chart.repo, '--version', chart.version];
}

export function chartLabel(chart: ChartRef): string {
  return 'path' in chart ? chart.path : `${chart.chart} ${chart.version} from ${chart.repo}`;
}

const seconds = (ms: number) => `${Math.max(1, Math.ceil(ms / 1000))}s`;

export class Helm {
  readonly kubeconfigPath: string;
  readonly log: Logger;
  readonly bin: string;
  readonly home: string;
  /** Invocations so far, by helm subcommand (tests and reports count them). */
  readonly calls: Record<string, number> = {};
  #homeReady = false;

  constructor(kubeconfigPath: string, log: Logger, opts: HelmOptions = {}) {
    this.kubeconfigPath = kubeconfigPath;
    this.log = log;
    this.bin = opts.bin ?? process.env.HELM_BIN ?? 'helm';
    this.home = opts.home ?? defaultHome();
  }

  #env(): Record<string, string> {
    if (!this.#homeReady) {
      for (const d of ['cache', 'config', 'data']) mkdirSync(join(this.home, d), { recursive: true, mode: 0o700 });
      this.#homeReady = true;
    }
    return {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: this.home,
      HELM_CACHE_HOME: join(this.home, 'cache'),
      HELM_CONFIG_HOME: join(this.home, 'config'),
      HELM_DATA_HOME: join(this.home, 'data'),
    };
  }

  async #run(args: string[], opts: { input?: string; signal?: AbortSignal; cluster?: boolean } = {}): Promise<string> {
    const command = args[0] ?? '';
    this.calls[command] = (this.calls[command] ?? 0) + 1;
    const full = opts.cluster === false ? args : [...args, '--kubeconfig', this.kubeconfigPath];
    const started = Date.now();
    this.log.debug({ helm: full }, `helm ${command}`);
    // Loaded when helm first runs: a no-op boot runs none, and execa is a good share of start-up.
    const { execa } = await import('execa');
    const res = await execa(this.bin, full, {
      env: this.#env(),
      extendEnv: false,
      input: opts.input ?? '',
      reject: false,
      // A killed helm leaves the release pending; the next run's recovery expects exactly that.
      ...(opts.signal ? { cancelSignal: opts.signal } : {}),
      forceKillAfterDelay: 10_000,
      maxBuffer: 64 * 1024 * 1024,
    });
    if (res.isCanceled) throw opts.signal?.reason ?? new Error(`helm ${command}: cancelled`);
    if (res.failed) {
      // Helm prints warnings (kubeconfig permissions) on stderr before the error; keep all of it.
      const stderr = String(res.stderr || res.stdout || res.shortMessage || '').trim();
      if (res.exitCode === undefined && res.code === 'ENOENT') {
        throw new HelmError(command, undefined, `cannot run ${this.bin}: not found (put helm on PATH or set HELM_BIN)`);
      }
      if (isTransientHelmError(stderr)) throw new TransientError(`helm ${command}: ${stderr}`);
      throw new HelmError(command, res.exitCode, stderr);
    }
    this.log.debug({ helm: command, durationMs: Date.now() - started }, `helm ${command} done`);
    return res.stdout;
  }

  /**
   * `helm upgrade --install` with exactly `spec.values` as the user-supplied values:
   * --reset-values, because helm would otherwise reuse the old ones when the new set is empty.
   */
  async upgradeInstall(spec: HelmReleaseSpec, opts: HelmWriteOptions): Promise<void> {
    const args = [
      'upgrade', spec.name, ...chartArgs(spec.chart),
      '--install', '--namespace', spec.namespace, '--create-namespace',
      '--reset-values', '--values', '-', '--timeout', seconds(opts.timeoutMs),
      ...(opts.takeOwnership ? ['--take-ownership'] : []),
      ...(opts.forceConflicts ? ['--force-conflicts'] : []),
    ];
    await this.#write(args, opts, JSON.stringify(spec.values));
  }

  async rollback(name: string, namespace: string, revision: number, opts: HelmWriteOptions): Promise<void> {
    await this.#write(['rollback', name, String(revision), '--namespace', namespace, '--timeout', seconds(opts.timeoutMs)], opts);
  }

  /** What the chart would install with these values (`helm template`, no cluster contacted). */
  async template(spec: HelmReleaseSpec, signal?: AbortSignal): Promise<ManifestObject[]> {
    const args = ['template', spec.name, ...chartArgs(spec.chart), '--namespace', spec.namespace, '--values', '-'];
    return manifestObjects(await this.#run(args, { input: JSON.stringify(spec.values), signal, cluster: false }), spec.namespace);
  }

  /**
   * --wait: the install that follows a recovery would otherwise meet the release's own
   * Namespaces (cilium-secrets) still terminating and fail ("being terminated").
   */
  async uninstall(name: string, namespace: string, opts: HelmWriteOptions): Promise<void> {
    await this.#write(['uninstall', name, '--namespace', namespace, '--wait', '--timeout', seconds(opts.timeoutMs)], opts);
  }

  async #write(args: string[], opts: HelmWriteOptions, input?: string): Promise<void> {
    const started = Date.now();
    await this.#run(args, { input, signal: opts.signal });
    this.log.info({ helm: args[0], release: args[1], durationMs: Date.now() - started }, `helm ${args[0]} ${args[1]} done`);
  }
}

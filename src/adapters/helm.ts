// Thin adapter over the real `helm` binary via execa. It only runs helm and parses its JSON;
// what to do (skip, recover, upgrade) is decided in steps/helm-release.ts.
//
// helm runs with a minimal environment (extendEnv: false): our environment may hold things
// that are none of helm's business, and helm reads a lot of variables (KUBECONFIG, HELM_*,
// proxies) that would make a run depend on the shell it came from. Values go in on stdin,
// never in argv, and the kubeconfig is a path.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import type { Logger } from 'pino';
import { parse as parseYaml } from 'yaml';
import { TransientError } from '../engine/errors.ts';
import type { ChartRef } from '../settings/schema.ts';
import type { HelmReleaseSpec } from '../steps/types.ts';

/** A release as `helm list` reports it. */
export interface HelmReleaseInfo {
  name: string;
  namespace: string;
  revision: number;
  status: string;
  /** "<chart name>-<chart version>", as helm prints it. */
  chart: string;
  appVersion: string;
  updated: string;
}

/** One entry of `helm history`. */
export interface HelmRevision {
  revision: number;
  status: string;
  chart: string;
  appVersion: string;
  description: string;
  updated: string;
}

export interface ChartMeta {
  name: string;
  version: string;
}

export interface HelmWriteOptions {
  /** helm's own --timeout (hooks, rollback waits); helm is never run with --wait. */
  timeoutMs: number;
  signal?: AbortSignal;
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

// Failures that clear by themselves: the apiserver restarting under k3s, a killed run's lock.
const TRANSIENT_STDERR = [
  /Kubernetes cluster unreachable/i,
  /connection refused/i,
  /connection reset by peer/i,
  /i\/o timeout/i,
  /TLS handshake timeout/i,
  /the server is currently unable to handle the request/i,
  /etcdserver: (request timed out|leader changed)/i,
  /http2: client connection lost/i,
  /context deadline exceeded/i,
  /another operation \(install\/upgrade\/rollback\) is in progress/i,
];

export function isTransientHelmError(stderr: string): boolean {
  return TRANSIENT_STDERR.some((re) => re.test(stderr));
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
const escapeRegex = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

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
    const command = args[0] === 'get' || args[0] === 'show' ? `${args[0]} ${args[1]}` : (args[0] ?? '');
    this.calls[command] = (this.calls[command] ?? 0) + 1;
    const full = opts.cluster === false ? args : [...args, '--kubeconfig', this.kubeconfigPath];
    const started = Date.now();
    this.log.debug({ helm: full }, `helm ${command}`);
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

  /** The release (any status), or undefined when there is none. */
  async get(name: string, namespace: string, signal?: AbortSignal): Promise<HelmReleaseInfo | undefined> {
    const out = await this.#run(['list', '--namespace', namespace, '--all', '--filter', `^${escapeRegex(name)}$`, '--output', 'json'], { signal });
    const list = JSON.parse(out || '[]') as Array<Record<string, unknown>>;
    const r = list.find((x) => x.name === name && x.namespace === namespace);
    if (!r) return undefined;
    return {
      name,
      namespace,
      revision: Number(r.revision),
      status: String(r.status ?? ''),
      chart: String(r.chart ?? ''),
      appVersion: String(r.app_version ?? ''),
      updated: String(r.updated ?? ''),
    };
  }

  /** User-supplied values of the latest (or the given) revision; {} when there are none. */
  async values(name: string, namespace: string, revision?: number, signal?: AbortSignal): Promise<Record<string, unknown>> {
    const args = ['get', 'values', name, '--namespace', namespace, '--output', 'json'];
    if (revision !== undefined) args.push('--revision', String(revision));
    const out = await this.#run(args, { signal });
    const v = JSON.parse(out || 'null') as unknown;
    return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
  }

  async history(name: string, namespace: string, signal?: AbortSignal): Promise<HelmRevision[]> {
    const out = await this.#run(['history', name, '--namespace', namespace, '--max', '256', '--output', 'json'], { signal });
    const list = JSON.parse(out || '[]') as Array<Record<string, unknown>>;
    return list.map((r) => ({
      revision: Number(r.revision),
      status: String(r.status ?? ''),
      chart: String(r.chart ?? ''),
      appVersion: String(r.app_version ?? ''),
      description: String(r.description ?? ''),
      updated: String(r.updated ?? ''),
    }));
  }

  /** Name and version of a local chart (directory or .tgz); contacts no cluster. */
  async showChart(path: string, signal?: AbortSignal): Promise<ChartMeta> {
    const out = await this.#run(['show', 'chart', path], { signal, cluster: false });
    const meta = parseYaml(out) as { name?: unknown; version?: unknown } | null;
    if (!meta || typeof meta.name !== 'string' || typeof meta.version !== 'string') {
      throw new HelmError('show chart', 0, `${path}: Chart.yaml has no name or version`);
    }
    return { name: meta.name, version: meta.version };
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
    ];
    await this.#write(args, opts, JSON.stringify(spec.values));
  }

  async rollback(name: string, namespace: string, revision: number, opts: HelmWriteOptions): Promise<void> {
    await this.#write(['rollback', name, String(revision), '--namespace', namespace, '--timeout', seconds(opts.timeoutMs)], opts);
  }

  async uninstall(name: string, namespace: string, opts: HelmWriteOptions): Promise<void> {
    await this.#write(['uninstall', name, '--namespace', namespace, '--timeout', seconds(opts.timeoutMs)], opts);
  }

  async #write(args: string[], opts: HelmWriteOptions, input?: string): Promise<void> {
    const started = Date.now();
    await this.#run(args, { input, signal: opts.signal });
    this.log.info({ helm: args[0], release: args[1], durationMs: Date.now() - started }, `helm ${args[0]} ${args[1]} done`);
  }
}

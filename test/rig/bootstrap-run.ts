// A whole bootstrap "site" for tests that run the real CLI as a child process: a control plane
// with controllers and a simulated node, the Cloudflare emulator, the demo settings (real
// charts) pointed at them, and what it takes to start, watch and SIGKILL `homelab-bootstrap
// apply`, then compare what it left with another site's end state.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { binDir, binPath, repoRoot } from './binaries.ts';
import { startControlPlane, type ControlPlane, type ControlPlaneOptions } from './control-plane.ts';
import { CloudflareEmulator } from './cloudflare-emulator.ts';
import { argocdChart, ciliumChart } from './charts.ts';
import { installCrds, playCiliumOperator, sharedCrdsDir, type OperatorPlay } from './crds.ts';
import { kubeJson } from './kube-http.ts';
import { removeOnExit } from './processes.ts';
import { bootId, parseHolder } from '../../src/engine/lease.ts';

export const CF_TOKEN = 'cf-token-of-the-bootstrap-site-0123456789';
export const CF_ACCOUNT = 'fedcba9876543210fedcba9876543210';
export const ZONE = 'peterstorm.io';
export const CLI = join(repoRoot, 'src', 'cli.ts');

export interface Site {
  cp: ControlPlane;
  emu: CloudflareEmulator;
  dir: string;
  config: string;
  settings: Record<string, any>;
  /** Environment of the CLI: helm from .bin, nothing secret. */
  env: NodeJS.ProcessEnv;
  /** The stand-in cilium-operator, when the site started without the Cilium CRDs. */
  operator?: OperatorPlay;
  stop(): Promise<void>;
}

/** How long after cilium-operator's Pod turns Ready the rig registers the Cilium CRDs, as the real operator does once it runs. */
export const OPERATOR_CRD_DELAY_MS = 2000;

/** Settings of examples/homelab.json pointed at the local rig, with the real pinned charts. */
export function demoSettings(opts: { kubeconfig: string; ageKeyFile: string; tokenFile: string; apiBaseUrl: string; accountId: string }): Record<string, any> {
  const s = JSON.parse(readFileSync(join(repoRoot, 'examples', 'homelab.json'), 'utf8')) as Record<string, any>;
  s.kubeconfigFile = opts.kubeconfig;
  s.sops = { ageKeyFile: opts.ageKeyFile };
  // The charts the daemon pins, as Nix ships them (a local .tgz); the readiness wait is on, as on a real node.
  s.cilium = { chart: { path: ciliumChart() }, waitForReady: true };
  s.argocd = { chart: { path: argocdChart() } };
  s.cloudflare = { ...s.cloudflare, accountId: opts.accountId, apiTokenFile: opts.tokenFile, apiBaseUrl: opts.apiBaseUrl };
  return s;
}

/**
 * Starts a control plane with controllers and a kwok node, and an emulator, and writes the demo
 * settings for them. The Cilium CRDs are registered up front (`ciliumCrds`, the default, so no
 * run waits for them), or else by the stand-in cilium-operator once the chart's operator Pod
 * runs, as on a cold cluster.
 */
export async function startSite(opts: { ciliumCrds?: boolean; controlPlane?: ControlPlaneOptions; mutate?: (s: Record<string, any>) => void } = {}): Promise<Site> {
  const dir = mkdtempSync(join(tmpdir(), 'hb-site-'));
  const forgetDir = removeOnExit(dir);
  const [cp, emu] = await Promise.all([
    startControlPlane({ log: () => {}, controllers: true, ...opts.controlPlane }),
    CloudflareEmulator.start({ token: CF_TOKEN, accountId: CF_ACCOUNT, zones: [ZONE] }),
  ]);
  let operator: OperatorPlay | undefined;
  try {
    if (opts.ciliumCrds ?? true) await installCrds(cp, join(sharedCrdsDir, 'cilium'));
    else operator = playCiliumOperator(cp, OPERATOR_CRD_DELAY_MS, { whenRunning: true });
    // One age key for every site, so two sites' Secrets compare equal; 0600 as a real one.
    const ageKeyFile = join(dir, 'keys.txt');
    copyFileSync(join(repoRoot, 'test', 'fixtures', 'age', 'test-key.txt'), ageKeyFile);
    chmodSync(ageKeyFile, 0o600);
    const tokenFile = join(dir, 'cloudflare-token');
    writeFileSync(tokenFile, `${CF_TOKEN}\n`, { mode: 0o600 });
    const settings = demoSettings({ kubeconfig: cp.kubeconfigPath, ageKeyFile, tokenFile, apiBaseUrl: emu.baseUrl, accountId: CF_ACCOUNT });
    opts.mutate?.(settings);
    const config = join(dir, 'homelab.json');
    writeFileSync(config, JSON.stringify(settings, null, 2));
    const env: NodeJS.ProcessEnv = { PATH: `${binDir()}:${process.env.PATH}`, HOME: dir, LOG_LEVEL: 'info' };
    return {
      cp,
      emu,
      dir,
      config,
      settings,
      env,
      operator,
      async stop() {
        operator?.cancel();
        killRuns(dir);
        try {
          await emu.stop(); // throws on schema violations, after stopping
        } finally {
          await cp.stop();
          rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
          forgetDir();
        }
      },
    };
  } catch (e) {
    operator?.cancel();
    await emu.stop().catch(() => {});
    await cp.stop();
    throw e;
  }
}

// ---- running the CLI --------------------------------------------------------------------------

export interface LogLine {
  level?: string;
  time?: string;
  step?: string;
  event?: string;
  outcome?: string;
  msg?: string;
  [k: string]: unknown;
}

export interface CliRun {
  child: ChildProcess;
  pid: number;
  /** JSON log lines so far (stdout), parsed; non-JSON lines (the summary) are in `text`. */
  lines: LogLine[];
  text: string[];
  stderr: string[];
  /** Settles when the process is gone and reaped. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }>;
  /** Resolves with the first line matching, or rejects if the process ends first. */
  waitLine(match: (l: LogLine) => boolean, what?: string): Promise<LogLine>;
  /** SIGKILL to the whole process group: the CLI and the helm it runs, as a power cut or systemd's stop. */
  kill(): Promise<void>;
}

/** Runs still going, by the site (its dir) they run against. */
const running = new Map<ChildProcess, string>();
let exitHooked = false;

function killRuns(siteDir?: string): void {
  for (const [c, dir] of running) {
    if (siteDir !== undefined && dir !== siteDir) continue;
    try {
      process.kill(-c.pid!, 'SIGKILL');
    } catch {
      // gone
    }
  }
}

export function startCli(site: Pick<Site, 'config' | 'env' | 'dir'>, opts: { stateDir: string; args?: string[]; env?: NodeJS.ProcessEnv }): CliRun {
  if (!exitHooked) {
    exitHooked = true;
    process.on('exit', () => killRuns());
  }
  mkdirSync(opts.stateDir, { recursive: true });
  const started = performance.now();
  // Own process group (detached), so one kill takes helm along; STATE_DIRECTORY puts helm's
  // home there too, instead of a temp dir a SIGKILL would leave behind.
  const child = spawn(process.execPath, [CLI, 'apply', '--config', site.config, '--state-dir', opts.stateDir, ...(opts.args ?? [])], {
    env: { ...site.env, STATE_DIRECTORY: opts.stateDir, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  running.set(child, site.dir);
  const lines: LogLine[] = [];
  const text: string[] = [];
  const stderr: string[] = [];
  const waiters = new Set<{ match: (l: LogLine) => boolean; resolve: (l: LogLine) => void }>();
  createInterface({ input: child.stdout! }).on('line', (line) => {
    let parsed: LogLine | undefined;
    try {
      parsed = JSON.parse(line) as LogLine;
    } catch {
      text.push(line);
      return;
    }
    lines.push(parsed);
    for (const w of waiters) {
      if (w.match(parsed)) {
        waiters.delete(w);
        w.resolve(parsed);
      }
    }
  });
  createInterface({ input: child.stderr! }).on('line', (line) => stderr.push(line));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }>((resolve) => {
    child.once('close', (code, signal) => {
      running.delete(child);
      resolve({ code, signal, ms: Math.round(performance.now() - started) });
    });
  });
  return {
    child,
    pid: child.pid!,
    lines,
    text,
    stderr,
    exited,
    waitLine(match, what = 'a log line') {
      const seen = lines.find(match);
      if (seen) return Promise.resolve(seen);
      return new Promise<LogLine>((resolve, reject) => {
        const w = { match, resolve };
        waiters.add(w);
        void exited.then((e) => {
          if (waiters.delete(w)) reject(new Error(`the run ended (code ${e.code}, signal ${e.signal}) before ${what}\n${tail(lines, text, stderr)}`));
        });
      });
    },
    async kill() {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
      await exited;
      // helm runs in the same group; wait until no member is left, so nothing writes after the "crash".
      await until('the killed run’s process group is gone', () => groupMembers(child.pid!).length === 0, 10_000);
    },
  };
}

export function tail(lines: LogLine[], text: string[], stderr: string[], n = 15): string {
  return [...lines.slice(-n).map((l) => `${l.level} ${l.step ?? ''} ${l.msg ?? ''}`), ...text.slice(-12), ...stderr.slice(-5)].join('\n');
}

/** Full run to the end; throws with the log tail unless the exit code is `expect`. */
export async function runToEnd(site: Pick<Site, 'config' | 'env' | 'dir'>, opts: { stateDir: string; args?: string[]; env?: NodeJS.ProcessEnv; expect?: number }): Promise<CliRun & { ms: number }> {
  const run = startCli(site, opts);
  const e = await run.exited;
  if (e.code !== (opts.expect ?? 0)) throw new Error(`apply exited ${e.code} (signal ${e.signal}), expected ${opts.expect ?? 0}:\n${tail(run.lines, run.text, run.stderr, 40)}`);
  return Object.assign(run, { ms: e.ms });
}

/** Step outcomes from a finished run's `finish` lines. */
export function outcomes(run: Pick<CliRun, 'lines'>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const l of run.lines) if (l.event === 'finish' && l.step) out[l.step] = String(l.outcome);
  return out;
}

/** Writes the run reported (sum of `changes` of its finish lines). */
export function changeCount(run: Pick<CliRun, 'lines'>): number {
  return run.lines.filter((l) => l.event === 'finish').reduce((n, l) => n + (typeof l.changes === 'number' ? l.changes : 0), 0);
}

/** Pids of the processes in group `pgid` (a SIGKILLed group leader's helm child lingers briefly). */
export function groupMembers(pgid: number): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // fields[0] is the state, [2] the process group
      if (Number(fields[2]) === pgid && fields[0] !== 'Z') out.push(Number(e));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** The command lines of `pid`'s living descendants, e.g. to see `helm upgrade cilium` start. */
export function descendants(pid: number): { pid: number; argv: string[] }[] {
  const children = new Map<number, number[]>();
  const argv = new Map<number, string[]>();
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (fields[0] === 'Z') continue;
      const ppid = Number(fields[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(e)]);
      argv.set(Number(e), readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0').filter(Boolean));
    } catch {
      // gone meanwhile
    }
  }
  const out: { pid: number; argv: string[] }[] = [];
  const visit = (p: number) => {
    for (const c of children.get(p) ?? []) {
      out.push({ pid: c, argv: argv.get(c) ?? [] });
      visit(c);
    }
  };
  visit(pid);
  return out;
}

export async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 30_000, everyMs = 20): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting until ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

// ---- what a site holds ------------------------------------------------------------------------

export interface HelmListEntry {
  name: string;
  namespace: string;
  status: string;
  chart: string;
  revision: string;
}

/** `helm list --all -A` with the rig's own identity. */
export function helmList(cp: ControlPlane): HelmListEntry[] {
  const r = spawnSync(binPath('helm'), ['list', '--all', '--all-namespaces', '--output', 'json', '--kubeconfig', join(cp.dir, 'rig-kubeconfig')], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH, HOME: cp.dir },
  });
  if (r.status !== 0) throw new Error(`helm list failed: ${r.stderr}`);
  return JSON.parse(r.stdout || '[]') as HelmListEntry[];
}

function helmValues(cp: ControlPlane, name: string, namespace: string): unknown {
  const r = spawnSync(binPath('helm'), ['get', 'values', name, '--namespace', namespace, '--output', 'json', '--kubeconfig', join(cp.dir, 'rig-kubeconfig')], {
    encoding: 'utf8',
    env: { PATH: process.env.PATH, HOME: cp.dir },
  });
  if (r.status !== 0) throw new Error(`helm get values ${name} failed: ${r.stderr}`);
  return JSON.parse(r.stdout || 'null');
}

interface ApiResource {
  name: string;
  kind: string;
  namespaced: boolean;
  verbs: string[];
}

type Obj = { apiVersion?: string; kind?: string; metadata: Record<string, any>; [k: string]: any };

const WATCHED_NAMESPACES = ['kube-system', 'argocd', 'cloudflared'];
// Made and renewed by the apiserver itself, or by the rig: not the daemon's doing. Pods and what
// controllers make from a workload (ReplicaSets, ControllerRevisions) carry random names, and a
// hook Job a uid in its selector: they differ between two equal runs.
const SKIP_RESOURCES = new Set(['events', 'leases', 'endpoints', 'endpointslices', 'pods', 'replicasets', 'controllerrevisions', 'jobs']);
// Set by the workload controllers and counted per rollout: a recovered run may count one more.
const CONTROLLER_ANNOTATIONS = ['deployment.kubernetes.io/revision', 'deprecated.daemonset.template.generation'];

/** A list, retried while the apiserver answers 429/503 (a CRD's storage initialising just after it became Established). */
async function listItems(cp: ControlPlane, path: string): Promise<Obj[]> {
  for (let attempt = 1; ; attempt++) {
    const r = await kubeJson<{ items: Obj[] }>(cp.rig, 'GET', path, { allow: [429, 503] });
    if (r.status === 200) return r.json?.items ?? [];
    if (attempt >= 50) throw new Error(`GET ${path}: HTTP ${r.status} ${attempt} times`);
    await new Promise((res) => setTimeout(res, 200));
  }
}

async function resources(cp: ControlPlane): Promise<{ groupVersion: string; r: ApiResource }[]> {
  const out: { groupVersion: string; r: ApiResource }[] = [];
  const core = await kubeJson<{ resources: ApiResource[] }>(cp.rig, 'GET', '/api/v1');
  for (const r of core.json?.resources ?? []) out.push({ groupVersion: 'v1', r });
  const groups = await kubeJson<{ groups: { name: string; preferredVersion: { groupVersion: string }; versions: { groupVersion: string }[] }[] }>(cp.rig, 'GET', '/apis');
  for (const g of groups.json?.groups ?? []) {
    // Preferred version first; a kind served only by another version (the L2 policy: v2alpha1) too.
    const seen = new Set<string>();
    for (const gv of [g.preferredVersion.groupVersion, ...g.versions.map((v) => v.groupVersion)]) {
      const list = await kubeJson<{ resources: ApiResource[] }>(cp.rig, 'GET', `/apis/${gv}`, { allow: [503] });
      for (const r of list.json?.resources ?? []) {
        if (seen.has(r.name)) continue;
        seen.add(r.name);
        out.push({ groupVersion: gv, r });
      }
    }
  }
  return out.filter(({ r }) => !r.name.includes('/') && r.verbs.includes('list') && !SKIP_RESOURCES.has(r.name));
}

/** An object without what differs between two equal runs: ids, versions, times, allocated IPs. */
function normalise(o: Obj, tunnelIds: string[]): Obj {
  const { uid: _u, resourceVersion: _rv, creationTimestamp: _ct, managedFields: _mf, generation: _g, ...meta } = o.metadata;
  const copy: Obj = { ...o, metadata: meta };
  delete copy.status;
  // The Cilium chart generates its TLS material (Hubble, its CA) afresh on every render, and marks those Secrets so.
  if (copy.kind === 'Secret' && (meta.labels as Record<string, string> | undefined)?.['cilium.io/helm-template-non-idempotent'] === 'true' && copy.data) {
    copy.data = Object.fromEntries(Object.entries(copy.data as Record<string, string>).map(([k, v]) => [k, /\.(crt|key)$/.test(k) ? '<generated by the chart>' : v]));
  }
  if (meta.annotations) {
    const annotations = { ...(meta.annotations as Record<string, string>) };
    for (const a of CONTROLLER_ANNOTATIONS) delete annotations[a];
    meta.annotations = annotations;
  }
  if (copy.kind === 'Service' && copy.spec) {
    const { clusterIP: _c, clusterIPs: _cs, ...spec } = copy.spec as Record<string, unknown>;
    // Allocated at random by the apiserver.
    if (Array.isArray(spec.ports)) spec.ports = (spec.ports as Record<string, unknown>[]).map(({ nodePort: _n, ...p }) => p);
    copy.spec = spec;
  }
  let text = JSON.stringify(copy);
  for (const id of tunnelIds) text = text.split(id).join('<tunnel-id>');
  return JSON.parse(text) as Obj;
}

export interface EndState {
  helm: { name: string; namespace: string; status: string; chart: string; values: unknown }[];
  /** Every object in kube-system, argocd and cloudflared (helm's release records aside), normalised. */
  objects: Record<string, Obj>;
  /** Cluster-scoped objects labelled by helm or the daemon, and every namespace and CRD by name. */
  cluster: Record<string, Obj>;
  namespaces: string[];
  crds: string[];
  tunnels: { name: string; config_src: string; ingress: unknown }[];
  dns: { type: string; name: string; content: string; proxied: boolean; ttl: number; comment: string | null }[];
  /**
   * The bootstrap lease: never made, free, or held by a living process. A holder on this host
   * whose process is dead (a killed run) counts as free: the next run takes it at once.
   */
  lease: 'absent' | 'free' | 'held';
}

/** What the site holds after a run, comparable across sites (tunnel ids and tokens replaced by placeholders). */
/** The end state of one clean apply on a site of its own: what killed or racing runs must add up to. */
export async function cleanRunEndState(): Promise<EndState> {
  const ref = await startSite();
  try {
    await runToEnd(ref, { stateDir: join(ref.dir, 'state') });
    return await endState(ref);
  } finally {
    await ref.stop();
  }
}

export async function endState(site: Pick<Site, 'cp' | 'emu'>): Promise<EndState> {
  const { cp, emu } = site;
  const tunnels = emu.liveTunnels();
  const tunnelIds = tunnels.map((t) => t.id);
  const tokens = new Map(tunnels.map((t) => [Buffer.from(emu.tunnelToken(t.id)).toString('base64'), '<token of the live tunnel>']));
  const objects: Record<string, Obj> = {};
  const cluster: Record<string, Obj> = {};
  const namespaces: string[] = [];
  const crds: string[] = [];
  for (const { groupVersion, r } of await resources(cp)) {
    const path = `${groupVersion === 'v1' ? '/api/v1' : `/apis/${groupVersion}`}`;
    if (r.namespaced) {
      for (const ns of WATCHED_NAMESPACES) {
        for (const o of await listItems(cp, `${path}/namespaces/${ns}/${r.name}`)) {
          if (r.name === 'secrets' && String(o.type) === 'helm.sh/release.v1') continue; // revisions differ after a recovery
          // A hook's objects live from one hook run to the next (before-hook-creation): a rollback
          // after a killed upgrade runs no pre-upgrade hook, so they may be gone where a clean run kept them.
          if ((o.metadata.annotations as Record<string, string> | undefined)?.['helm.sh/hook']) continue;
          const n = normalise({ ...o, apiVersion: groupVersion, kind: r.kind }, tunnelIds);
          if (r.name === 'secrets' && n.data) for (const [k, v] of Object.entries(n.data as Record<string, string>)) if (tokens.has(v)) (n.data as Record<string, string>)[k] = tokens.get(v)!;
          objects[`${r.kind} ${ns}/${o.metadata.name}`] = n;
        }
      }
    } else {
      for (const o of await listItems(cp, `${path}/${r.name}`)) {
        if (r.name === 'namespaces') namespaces.push(o.metadata.name as string);
        if (r.name === 'customresourcedefinitions') crds.push(o.metadata.name as string);
        const managedBy = (o.metadata.labels as Record<string, string> | undefined)?.['app.kubernetes.io/managed-by'];
        if (managedBy === 'Helm' || managedBy === 'homelab-bootstrap') cluster[`${r.kind} ${o.metadata.name}`] = normalise({ ...o, apiVersion: groupVersion, kind: r.kind }, tunnelIds);
      }
    }
  }
  const helm = helmList(cp)
    .map((h) => ({ name: h.name, namespace: h.namespace, status: h.status, chart: h.chart, values: helmValues(cp, h.name, h.namespace) }))
    .sort((a, b) => a.name.localeCompare(b.name));
  const lease = await kubeJson<{ spec?: { holderIdentity?: string } }>(cp.rig, 'GET', '/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/homelab-bootstrap', { allow: [404] });
  const norm = (s: string) => tunnelIds.reduce((acc, id) => acc.split(id).join('<tunnel-id>'), s);
  return {
    helm,
    objects,
    cluster,
    namespaces: namespaces.sort(),
    crds: crds.sort(),
    tunnels: tunnels.map((t) => ({ name: t.name, config_src: t.config_src, ingress: t.config?.ingress ?? null })).sort((a, b) => a.name.localeCompare(b.name)),
    dns: emu
      .records(ZONE)
      .map((r) => ({ type: r.type, name: r.name, content: norm(r.content), proxied: r.proxied, ttl: r.ttl, comment: r.comment ?? null }))
      .sort((a, b) => a.name.localeCompare(b.name) || a.type.localeCompare(b.type) || a.content.localeCompare(b.content)),
    lease: lease.status === 404 ? 'absent' : leaseHeld(lease.json?.spec?.holderIdentity ?? '') ? 'held' : 'free',
  };
}

function leaseHeld(identity: string): boolean {
  if (identity === '') return false;
  const h = parseHolder(identity);
  if (!h || h.node !== hostname() || h.boot !== bootId()) return true;
  try {
    process.kill(h.pid, 0);
  } catch {
    return false;
  }
  return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${h.pid}/stat`, 'utf8'));
}

/** Invariants that hold at every instant, a killed run or not: one tunnel, one record per name and type, no pending release left by a *finished* run. */
export function duplicates(site: Pick<Site, 'emu'>): string[] {
  const problems: string[] = [];
  const live = site.emu.liveTunnels();
  if (live.length > 1) problems.push(`${live.length} live tunnels: ${live.map((t) => `${t.name} ${t.id}`).join(', ')}`);
  const seen = new Map<string, number>();
  for (const r of site.emu.records(ZONE)) seen.set(`${r.type} ${r.name}`, (seen.get(`${r.type} ${r.name}`) ?? 0) + 1);
  for (const [k, n] of seen) if (n > 1) problems.push(`${n} DNS records ${k}`);
  return problems;
}

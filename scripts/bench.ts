// `npm run bench`: what a boot costs, measured once on the local rig (real kube-apiserver +
// etcd with controllers and a kwok node, real helm with the real charts, the Cloudflare
// emulator), from a clean state that the script makes and
// tears down itself. Not a timed test: it prints figures and asserts only the one promise the
// daemon makes, that a no-op apply writes nothing.
//
//   1. cold apply, then a no-op apply, of the demo settings (the real CLI as a child process):
//      wall time, apiserver requests by verb (audit log), Cloudflare calls by method (the
//      emulator's request log), helm invocations (a counting shim first on PATH), new helm
//      revisions (helm history);
//   2. the same no-op converge done the naive way: `helm upgrade --install` of the same
//      releases with the same values, plus `kubectl apply --server-side` of the same objects,
//      in 3 rounds interleaved with our no-op (the machine is small and shared: medians);
//   3. the steady state: no-ops back to back, as every boot after a change runs (the release
//      records were read by the run before and are remembered), with their peak RSS;
//   4. process start-up: CPU time of `--version`, of a bare `node -e 0` and of `validate-config`
//      (medians of 5, interleaved).
// It ends with two lines, compared across changes:
//   `no-op apply: W writes, R reads, H helm runs, T ms, ratio-vs-naive X`
//   `start-up: version A ms cpu (bare node B ms), validate-config C ms cpu, peak RSS D MiB`
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { binDir, binPath, repoRoot } from '../test/rig/binaries.ts';
import { auditMark, countRequests, type RequestCounts } from '../test/rig/audit.ts';
import { readState } from '../src/engine/state.ts';
import { startSite } from '../test/rig/bootstrap-run.ts';

const say = (line = '') => process.stdout.write(`${line}\n`);
// What the NixOS package runs: the compiled dist/, built fresh below (src/ under type stripping
// would add the stripper's own start-up and memory to every figure).
const cli = join(repoRoot, 'dist', 'cli.js');

interface Proc {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a command to its end; wall time is measured around spawn..exit, as a caller would see it. */
function run(file: string, args: string[], env: NodeJS.ProcessEnv, input?: string): Promise<Proc> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(file, args, { env, stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (c: Buffer) => void (stdout += c.toString()));
    child.stderr!.on('data', (c: Buffer) => void (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr, ms: performance.now() - started }));
    if (input !== undefined) child.stdin!.end(input);
  });
}

async function must(what: string, p: Promise<Proc>): Promise<Proc> {
  const r = await p;
  if (r.code !== 0) throw new Error(`${what}: exit ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r;
}

const verbs = (c: RequestCounts) =>
  Object.entries(c.byVerb)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([v, n]) => `${v} ${n}`)
    .join(', ') || 'none';
const methods = (m: Record<string, number>) =>
  Object.entries(m)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([v, n]) => `${v} ${n}`)
    .join(', ') || 'none';
const ms = (n: number) => `${Math.round(n)} ms`;
const median = (xs: number[]) => {
  const s = xs.slice().sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

interface Releases {
  name: string;
  namespace: string;
}

async function main(): Promise<number> {
  await must('build', run(process.execPath, [join(repoRoot, 'scripts', 'build.ts')], process.env));
  say('starting a real kube-apiserver + etcd on loopback and the Cloudflare emulator...');
  // No Cilium CRDs: the cold apply is a real cold start; the site plays cilium-operator once its Pod runs.
  const site = await startSite({ ciliumCrds: false });
  const { cp, emu, config, dir } = site;
  try {
    const stateDir = join(dir, 'state');
    // helm history runs as the rig's own user so that it never shows up in the counted requests.
    const rigKubeconfig = join(cp.dir, 'rig-kubeconfig');

    // Every helm the daemon (or the naive script) starts goes through this shim: the daemon
    // runs helm with a minimal environment but keeps PATH, so the shim is found first. The
    // counter file's path is baked in because that environment drops everything else.
    const shimDir = join(dir, 'shim');
    mkdirSync(shimDir);
    const helmCalls = join(dir, 'helm-calls');
    writeFileSync(join(shimDir, 'helm'), `#!/bin/sh\nprintf '%s\\n' "$1" >> '${helmCalls}'\nexec '${binPath('helm')}' "$@"\n`);
    chmodSync(join(shimDir, 'helm'), 0o755);
    // info, the level the NixOS unit runs at; the lines are captured, and shown only when a
    // no-op apply turns out to change something.
    // NODE_OPTIONS as the NixOS package's wrapper sets it (package.json config.nodeOptions).
    const nodeOptions = (JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { config: { nodeOptions: string } }).config.nodeOptions;
    const env = { PATH: `${shimDir}:${binDir()}:${process.env.PATH}`, HOME: dir, LOG_LEVEL: 'info', NODE_OPTIONS: nodeOptions };
    const helmCount = () => {
      let lines: string[] = [];
      try {
        lines = readFileSync(helmCalls, 'utf8').split('\n').filter(Boolean);
      } catch {
        // no helm ran yet
      }
      const by: Record<string, number> = {};
      for (const l of lines) by[l] = (by[l] ?? 0) + 1;
      return { total: lines.length, by };
    };

    const rendered = JSON.parse((await must('render', run(process.execPath, [cli, 'render', '--config', config, '--output', 'json'], env))).stdout) as {
      helmReleases: { name: string; namespace: string; chart: { path?: string }; values: unknown }[];
      objects: { kind: string; data?: Record<string, string>; stringData?: Record<string, string> }[];
    };
    const releases: Releases[] = rendered.helmReleases.map((r) => ({ name: r.name, namespace: r.namespace }));
    const revisions = async (): Promise<Record<string, number>> => {
      const out: Record<string, number> = {};
      for (const r of releases) {
        const h = await run(binPath('helm'), ['history', r.name, '--namespace', r.namespace, '--output', 'json', '--kubeconfig', rigKubeconfig], env);
        const list = h.code === 0 ? (JSON.parse(h.stdout || '[]') as { revision: number }[]) : [];
        out[`${r.namespace}/${r.name}`] = Math.max(0, ...list.map((x) => x.revision));
      }
      return out;
    };

    interface Phase {
      ms: number;
      kube: RequestCounts;
      cf: Record<string, number>;
      cfWrites: number;
      helm: { total: number; by: Record<string, number> };
      newRevisions: string[];
      ok: boolean;
      detail: string;
    }
    /** One measured phase: fences the audit log, the emulator log and the helm counter around `body`. */
    const phase = async (body: () => Promise<{ ms: number; ok: boolean; detail: string }>): Promise<Phase> => {
      const before = await revisions();
      rmSync(helmCalls, { force: true });
      emu.resetLog();
      const mark = await auditMark(cp);
      const r = await body();
      const kube = await countRequests(cp, { since: mark });
      const cf = emu.countByMethod();
      const cfWrites = emu.writes().length;
      const helm = helmCount();
      const after = await revisions();
      const newRevisions = Object.keys(after).filter((k) => after[k]! > before[k]!).map((k) => `${k} ${before[k]} -> ${after[k]}`);
      return { ...r, kube, cf, cfWrites, helm, newRevisions };
    };
    const apply = (extraNodeArgs: string[] = [], explain = false) => async () => {
      const r = await run(process.execPath, [...extraNodeArgs, cli, 'apply', '--config', config, '--state-dir', stateDir], env);
      const state = readState(stateDir);
      const changes = state.lastRun?.changes ?? -1;
      // Where the time went, slowest first (the state file records each step's duration).
      const steps = Object.entries(state.steps)
        .sort(([, a], [, b]) => b.durationMs - a.durationMs)
        .map(([n, x]) => `${n} ${x.durationMs}`)
        .join(', ');
      // What changed and why, from the log (asked for on the no-op, where it should be empty).
      const changed = r.stdout.split('\n').filter((l) => /"outcome":"changed"|"action":"(create|update|delete)"/.test(l));
      const detail = r.code === 0 ? `exit 0, ${changes} changes; step ms: ${steps}` : `exit ${r.code}\n${r.stdout}\n${r.stderr}`;
      return { ms: r.ms, ok: r.code === 0, detail: explain && changed.length > 0 ? `${detail}\n    ${changed.join('\n    ')}` : detail };
    };
    const show = (title: string, p: Phase) => {
      say(`\n== ${title} ==`);
      say(`  result:               ${p.detail}`);
      say(`  wall time:            ${ms(p.ms)}`);
      say(`  apiserver requests:   ${p.kube.reads} reads, ${p.kube.writes} writes${p.kube.other ? `, ${p.kube.other} other` : ''} (by verb: ${verbs(p.kube)})`);
      if (p.kube.reads > 0) {
        const r = Object.entries(p.kube.byResource).filter(([k]) => /^(get|list|watch) /.test(k));
        say(`  apiserver reads:      ${r.map(([k, n]) => `${k} ${n}`).join(', ')}`);
      }
      if (p.kube.writes > 0) {
        const w = Object.entries(p.kube.byResource).filter(([k]) => /^(create|update|patch|delete|deletecollection) /.test(k));
        say(`  apiserver writes:     ${w.map(([k, n]) => `${k} ${n}`).join(', ')}`);
      }
      say(`  Cloudflare calls:     ${methods(p.cf)}; ${p.cfWrites} writes`);
      say(`  helm invocations:     ${p.helm.total} (${methods(p.helm.by)})`);
      say(`  new helm revisions:   ${p.newRevisions.length ? p.newRevisions.join(', ') : 'none'}`);
    };

    say(`  apiserver ${cp.server}, emulator ${emu.baseUrl}, ${releases.length} helm releases, ${rendered.objects.length} rendered objects`);
    say('  (the rig stands in for cilium-operator: it registers the Cilium CRDs once the chart\'s operator Pod is Ready on the kwok node)');

    // ---- 1. cold and no-op apply ----------------------------------------------------------
    const cold = await phase(apply());
    await site.operator?.done;
    show('cold apply', cold);

    // The naive no-op: a script that does not read before writing. helm upgrade --install of the
    // same releases (same chart paths, same values as `render`), then kubectl apply
    // --server-side of the same objects, with the daemon's field manager so the content is
    // identical. Secrets whose value is a placeholder (`<credential …>`, `<token of …>`) are left
    // out: a script has no value for them.
    const placeholder = (o: (typeof rendered.objects)[number]) =>
      o.kind === 'Secret' && Object.values({ ...o.data, ...o.stringData }).every((v) => /^<.*>$/.test(v));
    const objects = rendered.objects.filter((o) => !placeholder(o));
    const objectsFile = join(dir, 'naive-objects.json');
    writeFileSync(objectsFile, JSON.stringify({ apiVersion: 'v1', kind: 'List', items: objects }));
    const valueFiles = rendered.helmReleases.map((r) => {
      const f = join(dir, `naive-values-${r.name}.json`);
      writeFileSync(f, JSON.stringify(r.values));
      return f;
    });
    const naiveRun = async () => {
      const started = performance.now();
      for (const [i, r] of rendered.helmReleases.entries()) {
        if (!r.chart.path) throw new Error(`release ${r.name}: the bench expects a local chart path`);
        await must(`helm upgrade ${r.name}`, run('helm', ['upgrade', '--install', r.name, r.chart.path, '--namespace', r.namespace, '--create-namespace', '--values', valueFiles[i]!, '--kubeconfig', cp.kubeconfigPath], env));
      }
      await must('kubectl apply', run(binPath('kubectl'), ['apply', '--server-side', '--field-manager=homelab-bootstrap', '--force-conflicts', '-f', objectsFile, '--kubeconfig', cp.kubeconfigPath], env));
      return { ms: performance.now() - started, ok: true, detail: `${rendered.helmReleases.length} helm upgrade --install, then kubectl apply --server-side of ${objects.length} objects` };
    };

    // Each no-op run also reports its own peak RSS: a preload module writes
    // process.resourceUsage().maxRSS (getrusage(RUSAGE_SELF), kB) when the process exits. It
    // is the daemon's own peak, not helm's; helm runs as separate processes. (/usr/bin/time
    // may be absent, and polling /proc/<pid>/status races the exit.)
    const rssFile = join(dir, 'rss');
    const preload = `import { writeFileSync } from 'node:fs'; process.on('exit', () => writeFileSync(${JSON.stringify(rssFile)}, String(process.resourceUsage().maxRSS)));`;

    // Rounds of (ours, naive), interleaved so that load from outside (two cores, shared) hits
    // both alike; wall times are the medians. Every one of our runs must write nothing, also
    // right after a naive run has written a new helm revision.
    const ROUNDS = 3;
    const noops: Phase[] = [];
    const naives: Phase[] = [];
    const rss: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      noops.push(await phase(apply([`--import=data:text/javascript,${encodeURIComponent(preload)}`], true)));
      rss.push(Number(readFileSync(rssFile, 'utf8')));
      naives.push(await phase(naiveRun));
    }
    const times = (ps: Phase[]) => `${ps.map((p) => Math.round(p.ms)).join(', ')} ms; median ${ms(median(ps.map((p) => p.ms)))}`;
    const noop = noops[0]!;
    show('no-op apply (second run)', noop);
    say(`  wall time, ${ROUNDS} runs:    ${times(noops)}`);
    const laterWrites = noops.slice(1).map((p) => p.kube.writes + p.cfWrites + p.newRevisions.length);
    say(`  later no-op runs:     ${laterWrites.map((w) => `${w} writes/new revisions`).join(', ')} (each right after a naive run)`);
    const naive = naives[0]!;
    show('naive no-op (helm upgrade --install + kubectl apply --server-side; no Cloudflare part)', naive);
    say(`  wall time, ${ROUNDS} runs:    ${times(naives)}`);
    const rssKb = median(rss);

    // What every boot pays after the first: each no-op above followed a write of a release (the
    // cold apply, a naive run), so it read and decoded Helm's records again (megabytes each).
    // Back to back, the records are the ones already read, and remembered.
    const steady: Phase[] = [];
    const steadyRss: number[] = [];
    const warm = await apply()();
    if (!warm.ok) throw new Error(`no-op apply after the last naive run: ${warm.detail}`);
    for (let i = 0; i < ROUNDS; i++) {
      steady.push(await phase(apply([`--import=data:text/javascript,${encodeURIComponent(preload)}`], true)));
      steadyRss.push(Number(readFileSync(rssFile, 'utf8')));
    }
    show('no-op apply, steady state (right after another no-op: the release records already read)', steady[0]!);
    say(`  wall time, ${ROUNDS} runs:    ${times(steady)}`);
    const steadyRssKb = median(steadyRss);

    // ---- 3. start-up and memory -----------------------------------------------------------
    // CPU time (user + system) of the process itself, written by the same kind of preload at
    // exit: wall time of a short process is mostly the machine's mood, CPU time is what it costs.
    const cpuFile = join(dir, 'cpu');
    const cpuPreload = `--import=data:text/javascript,${encodeURIComponent(`import { writeFileSync } from 'node:fs'; process.on('exit', () => { const u = process.cpuUsage(); writeFileSync(${JSON.stringify(cpuFile)}, String((u.user + u.system) / 1000)); });`)}`;
    const cpuOf = async (args: string[]): Promise<number> => {
      await must(args.join(' '), run(process.execPath, [cpuPreload, ...args], env));
      return Number(readFileSync(cpuFile, 'utf8'));
    };
    await cpuOf([cli, '--version']); // warm the page cache
    const versionCpu: number[] = [];
    const bareCpu: number[] = [];
    const validateCpu: number[] = [];
    // Interleaved, so that load from outside hits all three alike.
    for (let i = 0; i < 5; i++) {
      bareCpu.push(await cpuOf(['-e', '0']));
      versionCpu.push(await cpuOf([cli, '--version']));
      validateCpu.push(await cpuOf([cli, 'validate-config', config]));
    }
    const starts: number[] = [];
    for (let i = 0; i < 5; i++) starts.push((await must('--version', run(process.execPath, [cli, '--version'], env))).ms);
    say('\n== process ==');
    say(`  start-up (node dist/cli.js --version): median ${ms(median(starts))} wall of 5 (${starts.map((s) => Math.round(s)).join(', ')} ms)`);
    say(`  CPU time, median of 5:               --version ${ms(median(versionCpu))}, bare \`node -e 0\` ${ms(median(bareCpu))}, validate-config ${ms(median(validateCpu))}`);
    const mib = (kb: number[]) => kb.map((k) => (k / 1024).toFixed(1)).join(', ');
    say(`  peak RSS of a no-op apply:           ${(steadyRssKb / 1024).toFixed(1)} MiB median of ${ROUNDS} in the steady state (${mib(steadyRss)}), ${(rssKb / 1024).toFixed(1)} MiB in the runs interleaved with the naive ones (${mib(rss)}: the first after the cold apply, which remembered its own revisions, the others after naive runs wrote new ones; daemon process only, getrusage maxRSS)`);

    const ourMs = median(noops.map((p) => p.ms));
    const naiveMs = median(naives.map((p) => p.ms));
    const ratio = naiveMs / ourMs;
    const writes = steady[0]!.kube.writes + steady[0]!.cfWrites;
    const reads = steady[0]!.kube.reads + (steady[0]!.cf.GET ?? 0);
    say('\n== summary ==');
    say(`  cold apply ${ms(cold.ms)}; no-op apply ${ms(ourMs)} (median) with 0 new helm revisions; naive no-op ${ms(naiveMs)} (median) with ${naive.kube.writes} apiserver writes and ${naive.newRevisions.length} new helm revisions per run`);
    say(`  below: writes, reads and peak RSS of the steady-state no-op, apiserver (audit log) plus Cloudflare (emulator log); T and the ratio use the medians of the no-ops interleaved with the naive runs (each reading the records again)`);
    const ok = cold.ok && [...noops, ...steady].every((p) => p.ok && p.kube.writes + p.cfWrites === 0 && p.newRevisions.length === 0);
    if (!ok) process.stderr.write(`bench: the no-op apply is not a no-op or an apply failed (see above)\n`);
    // The two lines compared across changes (issue 15): keep their shape.
    say(`no-op apply: ${writes} writes, ${reads} reads, ${noop.helm.total} helm runs, ${Math.round(ourMs)} ms, ratio-vs-naive ${ratio.toFixed(1)}`);
    say(`start-up: version ${Math.round(median(versionCpu))} ms cpu (bare node ${Math.round(median(bareCpu))} ms), validate-config ${Math.round(median(validateCpu))} ms cpu, peak RSS ${(steadyRssKb / 1024).toFixed(0)} MiB`);
    return ok ? 0 : 1;
  } finally {
    await site.stop();
  }
}

if (process.argv[1] && import.meta.filename === process.argv[1]) {
  process.exitCode = await main();
}

// `npm run demo`: the whole bootstrap of examples/homelab.json against a real local
// kube-apiserver with kube-controller-manager, kube-scheduler and a kwok-simulated node, real
// helm with the real Cilium and Argo CD charts, and the Cloudflare emulator, applied twice. The
// second apply must change nothing. Everything runs on loopback and is torn down at the end.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { repoRoot } from '../test/rig/binaries.ts';
import { helmList, OPERATOR_CRD_DELAY_MS, startSite, ZONE, type LogLine } from '../test/rig/bootstrap-run.ts';
import { kubeJson } from '../test/rig/kube-http.ts';
import { NODE_NAME } from '../test/rig/node-sim.ts';
import { readState } from '../src/engine/state.ts';

const say = (line: string) => process.stdout.write(`${line}\n`);
const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

/** Runs the CLI; its JSON log lines are collected, everything else (the summary, warnings) is shown as it comes. */
function runCli(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; lines: LogLine[] }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(repoRoot, 'src', 'cli.ts'), ...args], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    const lines: LogLine[] = [];
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        const l = JSON.parse(line) as LogLine;
        lines.push(l);
        if (l.level === 'warn' || l.level === 'error') say(`  ${l.level}: ${l.step ? `${l.step}: ` : ''}${l.msg}`);
      } catch {
        say(`  ${line}`);
      }
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? 1, lines }));
  });
}

/** What the run waited for: the readiness waits and the steps that spent their time waiting. */
function waits(lines: LogLine[]): string[] {
  const out: string[] = [];
  for (const l of lines) {
    if (l.event === 'rollout' && typeof l.waitedMs === 'number') out.push(`${l.step}: ${l.msg} (waited ${secs(l.waitedMs)})`);
  }
  const crds = lines.find((l) => l.event === 'finish' && l.step === 'cilium-crds');
  if (crds && typeof crds.durationMs === 'number') out.push(`cilium-crds: ${secs(crds.durationMs)} until cilium-operator had registered the Cilium CRDs`);
  return out;
}

async function main(): Promise<number> {
  say('starting kube-apiserver + etcd, kube-controller-manager, kube-scheduler and a kwok node on loopback, and the Cloudflare emulator...');
  // No Cilium CRDs yet: the rig plays cilium-operator, registering them once the chart's operator Pod runs.
  const site = await startSite({ ciliumCrds: false });
  const { cp, emu, config } = site;
  try {
    say(`  apiserver ${cp.server} ready in ${secs(cp.readyMs)} (controllers and node ${NODE_NAME}: ${secs(cp.controllersMs)}); emulator ${emu.baseUrl}`);
    const stateDir = join(site.dir, 'state');
    // helm from .bin, and a clean environment: the demo holds no secret in env.
    const env = { ...site.env, LOG_LEVEL: 'info' };
    const args = ['apply', '--config', config, '--state-dir', stateDir];

    say(`\n== first apply (cold cluster: Cilium's Pods must turn Ready on the simulated node; the rig registers the Cilium CRDs ${secs(OPERATOR_CRD_DELAY_MS)} after cilium-operator runs) ==`);
    const first = await runCli(args, env);
    const firstChanges = readState(stateDir).lastRun?.changes ?? -1;
    say(`first apply: exit ${first.code}, ${firstChanges} changes`);

    say('\nreal charts installed (helm list):');
    for (const h of helmList(cp)) say(`  ${h.namespace}/${h.name}: ${h.chart}, revision ${h.revision}, ${h.status}`);
    say('waited for:');
    for (const w of waits(first.lines)) say(`  ${w}`);
    // helm itself waits for a chart's hook Jobs (argo-cd's redis-secret-init) to complete.
    const jobs = await kubeJson<{ items: { metadata: { namespace: string; name: string; annotations?: Record<string, string> }; status?: { succeeded?: number } }[] }>(cp.rig, 'GET', '/apis/batch/v1/jobs');
    for (const j of jobs.json?.items ?? []) {
      const hook = j.metadata.annotations?.['helm.sh/hook'];
      if (hook) say(`  helm: the ${hook} hook Job ${j.metadata.namespace}/${j.metadata.name} (${j.status?.succeeded ? 'completed' : 'not completed'})`);
    }
    const pods = await kubeJson<{ items: { metadata: { namespace: string; name: string }; status?: { phase?: string; conditions?: { type: string; status: string }[] } }[] }>(
      cp.rig,
      'GET',
      `/api/v1/pods?fieldSelector=spec.nodeName%3D${NODE_NAME}`,
    );
    const items = pods.json?.items ?? [];
    const running = items.filter((p) => p.status?.phase === 'Running');
    say(`Pods on the simulated node ${NODE_NAME}: ${running.length} Running (${running.filter((p) => p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True')).length} Ready) of ${items.length}:`);
    for (const p of items.sort((a, b) => `${a.metadata.namespace}/${a.metadata.name}`.localeCompare(`${b.metadata.namespace}/${b.metadata.name}`))) {
      say(`  ${`${p.metadata.namespace}/${p.metadata.name}`.padEnd(58)} ${p.status?.phase ?? '?'}`);
    }
    const records = emu.records(ZONE);
    say(`Cloudflare now holds ${emu.liveTunnels().length} tunnel(s) and ${records.length} DNS records:`);
    for (const r of records.sort((a, b) => a.name.localeCompare(b.name))) say(`  ${r.type.padEnd(5)} ${r.name.padEnd(28)} ${r.content}${r.proxied ? ' (proxied)' : ''}`);

    say('\n== second apply (nothing should change) ==');
    emu.resetLog();
    const second = await runCli(args, env);
    const secondChanges = readState(stateDir).lastRun?.changes ?? -1;
    say(`Cloudflare write calls during the second apply: ${emu.writes().length}`);
    say('\n== plan on the converged cluster (exit 0 = nothing to change) ==');
    const plan = await runCli(['plan', '--config', config, '--state-dir', stateDir], { ...env, LOG_LEVEL: 'warn' });
    say(`plan: exit ${plan.code}`);
    say(`second apply: ${secondChanges} changes`);
    return first.code === 0 && second.code === 0 && plan.code === 0 && secondChanges === 0 && running.length > 0 ? 0 : 1;
  } finally {
    await site.stop();
  }
}

if (process.argv[1] && import.meta.filename === process.argv[1]) {
  process.exitCode = await main();
}

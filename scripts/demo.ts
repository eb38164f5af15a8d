// `npm run demo`: the whole bootstrap of examples/homelab.json against a real local
// kube-apiserver (plus real helm) and the Cloudflare emulator, applied twice. The second
// apply must change nothing. Everything runs on loopback and is torn down at the end.
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { startControlPlane } from '../test/rig/control-plane.ts';
import { playCiliumOperator, sharedCrdsDir } from '../test/rig/crds.ts';
import { binDir, binPath, repoRoot } from '../test/rig/binaries.ts';
import { CloudflareEmulator } from '../test/rig/cloudflare-emulator.ts';
import { readState } from '../src/engine/state.ts';

const say = (line: string) => process.stdout.write(`${line}\n`);

/** The argo-cd fixture chart with Argo CD's real CRDs in crds/, as the real chart ships them. */
export function argoChartWithCrds(dir: string): string {
  const chart = join(dir, 'argo-cd');
  cpSync(join(repoRoot, 'test', 'fixtures', 'charts', 'argo-cd'), chart, { recursive: true });
  mkdirSync(join(chart, 'crds'), { recursive: true });
  cpSync(join(sharedCrdsDir, 'argocd'), join(chart, 'crds'), { recursive: true });
  return chart;
}

/** Settings of examples/homelab.json pointed at the local rig. */
export function demoSettings(opts: { dir: string; kubeconfig: string; ageKeyFile: string; tokenFile: string; apiBaseUrl: string; accountId: string }): Record<string, any> {
  const s = JSON.parse(readFileSync(join(repoRoot, 'examples', 'homelab.json'), 'utf8')) as Record<string, any>;
  s.kubeconfigFile = opts.kubeconfig;
  s.sops = { ageKeyFile: opts.ageKeyFile };
  s.cilium = { chart: { path: join(repoRoot, 'test', 'fixtures', 'charts', 'cilium') }, waitForReady: false };
  s.argocd = { chart: { path: argoChartWithCrds(opts.dir) } };
  s.cloudflare = { ...s.cloudflare, accountId: opts.accountId, apiTokenFile: opts.tokenFile, apiBaseUrl: opts.apiBaseUrl };
  return s;
}

function runCli(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(repoRoot, 'src', 'cli.ts'), ...args], { env, stdio: ['ignore', 'inherit', 'inherit'] });
    child.on('error', reject);
    child.on('exit', (code) => resolve(code ?? 1));
  });
}

async function main(): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'hb-demo-'));
  say('starting a real kube-apiserver + etcd on loopback and the Cloudflare emulator...');
  const cp = await startControlPlane({ log: () => {} });
  const token = randomBytes(24).toString('hex');
  const accountId = randomBytes(16).toString('hex');
  const emu = await CloudflareEmulator.start({ token, accountId, zones: ['peterstorm.io'] });
  try {
    say(`  apiserver ${cp.server} ready in ${(cp.readyMs / 1000).toFixed(1)} s; emulator ${emu.baseUrl}`);
    const ageKeyFile = join(dir, 'keys.txt');
    execFileSync(binPath('age-keygen'), ['-o', ageKeyFile], { stdio: 'ignore' });
    const tokenFile = join(dir, 'cloudflare-token');
    writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
    const config = join(dir, 'homelab.json');
    writeFileSync(config, JSON.stringify(demoSettings({ dir, kubeconfig: cp.kubeconfigPath, ageKeyFile, tokenFile, apiBaseUrl: emu.baseUrl, accountId }), null, 2));
    const stateDir = join(dir, 'state');
    // helm from .bin, and a clean environment: the demo holds no secret in env.
    const env = { PATH: `${binDir()}:${process.env.PATH}`, HOME: dir, LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn' };
    const args = ['apply', '--config', config, '--state-dir', stateDir];

    say('\n== first apply (cold cluster; the rig plays cilium-operator and registers the Cilium CRDs 8 s in, so cilium-crds waits for them) ==');
    const operator = playCiliumOperator(cp, 8000);
    const first = await runCli(args, env);
    operator.cancel();
    const firstChanges = readState(stateDir).lastRun?.changes ?? -1;
    say(`first apply: exit ${first}, ${firstChanges} changes`);
    const records = emu.records('peterstorm.io');
    say(`Cloudflare now holds ${emu.liveTunnels().length} tunnel(s) and ${records.length} DNS records:`);
    for (const r of records.sort((a, b) => a.name.localeCompare(b.name))) say(`  ${r.type.padEnd(5)} ${r.name.padEnd(28)} ${r.content}${r.proxied ? ' (proxied)' : ''}`);

    say('\n== second apply (nothing should change) ==');
    emu.resetLog();
    const second = await runCli(args, env);
    const secondChanges = readState(stateDir).lastRun?.changes ?? -1;
    say(`Cloudflare write calls during the second apply: ${emu.writes().length}`);
    say('\n== plan on the converged cluster (exit 0 = nothing to change) ==');
    const plan = await runCli(['plan', '--config', config, '--state-dir', stateDir], env);
    say(`plan: exit ${plan}`);
    say(`second apply: ${secondChanges} changes`);
    return first === 0 && second === 0 && plan === 0 && secondChanges === 0 ? 0 : 1;
  } finally {
    await emu.stop();
    await cp.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.filename === process.argv[1]) {
  process.exitCode = await main();
}

// `npm run demo`: the whole bootstrap of examples/homelab.json against a real local
// kube-apiserver (plus real helm) and the Cloudflare emulator, applied twice. The second
// apply must change nothing. Everything runs on loopback and is torn down at the end.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { playCiliumOperator } from '../test/rig/crds.ts';
import { repoRoot } from '../test/rig/binaries.ts';
import { startSite, ZONE } from '../test/rig/bootstrap-run.ts';
import { readState } from '../src/engine/state.ts';

const say = (line: string) => process.stdout.write(`${line}\n`);

function runCli(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(repoRoot, 'src', 'cli.ts'), ...args], { env, stdio: ['ignore', 'inherit', 'inherit'] });
    child.on('error', reject);
    child.on('exit', (code) => resolve(code ?? 1));
  });
}

async function main(): Promise<number> {
  say('starting a real kube-apiserver + etcd on loopback and the Cloudflare emulator...');
  // No Cilium CRDs yet: the rig plays cilium-operator below, as on a cold cluster.
  const site = await startSite({ ciliumCrds: false });
  const { cp, emu, config } = site;
  try {
    say(`  apiserver ${cp.server} ready in ${(cp.readyMs / 1000).toFixed(1)} s; emulator ${emu.baseUrl}`);
    const stateDir = join(site.dir, 'state');
    // helm from .bin, and a clean environment: the demo holds no secret in env.
    const env = { ...site.env, LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn' };
    const args = ['apply', '--config', config, '--state-dir', stateDir];

    say('\n== first apply (cold cluster; the rig plays cilium-operator and registers the Cilium CRDs 8 s in, so cilium-crds waits for them) ==');
    const operator = playCiliumOperator(cp, 8000);
    const first = await runCli(args, env);
    operator.cancel();
    const firstChanges = readState(stateDir).lastRun?.changes ?? -1;
    say(`first apply: exit ${first}, ${firstChanges} changes`);
    const records = emu.records(ZONE);
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
    await site.stop();
  }
}

if (process.argv[1] && import.meta.filename === process.argv[1]) {
  process.exitCode = await main();
}

// The cluster misbehaving under the daemon: a kubeconfig pointing where nothing listens, credentials
// the apiserver refuses, an apiserver restarting in the middle of a run. Each time the error is
// clear (names the server, says what was tried, never prints a token), comes within its bound, and
// the Cloudflare steps, which need no cluster, still do their work.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { kubeJson } from '../rig/kube-http.ts';
import { apiserverControl, type ApiserverControl } from '../rig/restart.ts';
import { CF_TOKEN, changeCount, descendants, duplicates, helmList, outcomes, runToEnd, startCli, startSite, tail, until, ZONE, type Site } from '../rig/bootstrap-run.ts';
import { parseSettings } from '../../src/settings/load.ts';
import { Credentials } from '../../src/credentials.ts';
import { createAdapters } from '../../src/adapters/index.ts';
import { createLogger } from '../../src/log.ts';
import { runSteps, type StepReport } from '../../src/engine/run.ts';
import { BootstrapLease, KubeLeaseStore } from '../../src/engine/lease.ts';
import { STEPS } from '../../src/steps/index.ts';
import { makePreflightStep } from '../../src/steps/preflight.ts';
import type { Step } from '../../src/steps/types.ts';

let site: Site;
let apiserver: ApiserverControl | undefined;

before(async () => {
  site = await startSite();
});

after(async () => {
  await apiserver?.dispose();
  await site?.stop();
});

/** A port nothing listens on: bound, then released. */
async function deadPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** A copy of the site's settings with another kubeconfig; written next to the site's. */
function configWith(kubeconfig: string, name: string): string {
  const s = structuredClone(site.settings);
  s.kubeconfigFile = kubeconfig;
  const file = join(site.dir, `${name}.json`);
  writeFileSync(file, JSON.stringify(s, null, 2));
  return file;
}

function resetCloudflare(): void {
  site.emu.clearFaults();
  site.emu.tunnels.clear();
  site.emu.zone(ZONE).records.clear();
  site.emu.resetLog();
}

const report = (reports: StepReport[], step: string) => reports.find((r) => r.step === step)!;

describe('a hostile cluster', () => {
  it('a kubeconfig whose server does not answer: /readyz retried within the bound, then an error naming the server and the tries; Cloudflare still done', async () => {
    resetCloudflare();
    const port = await deadPort();
    const server = `https://127.0.0.1:${port}`;
    const kubeconfig = join(site.dir, 'kubeconfig-nobody-home');
    writeFileSync(kubeconfig, readFileSync(site.cp.kubeconfigPath, 'utf8').replace(site.cp.server, server), { mode: 0o600 });
    // In-process, as converge() wires it, with the /readyz bound cut from 180 s to 4 s.
    const settings = parseSettings({ ...structuredClone(site.settings), kubeconfigFile: kubeconfig });
    const lines: string[] = [];
    const log = createLogger({ level: 'debug', pretty: false, destination: new Writable({ write: (c, _e, cb) => (lines.push(String(c)), cb()) }) });
    const credentials = new Credentials(settings, '');
    const adapters = createAdapters(settings, credentials, log);
    const store = new KubeLeaseStore(kubeconfig);
    const lease = new BootstrapLease(store, { durationSeconds: 60, waitSeconds: 60, node: 'hostile', log });
    const boundMs = 4000;
    const steps = STEPS.map((s) => (s.name === 'preflight' ? (makePreflightStep({ readyzWaitMs: boundMs, readyzDelayMs: 200, readyzMaxDelayMs: 1000 }) as Step) : s));
    const started = performance.now();
    const reports = await runSteps(steps, {
      mode: 'apply',
      settings,
      log,
      retry: { attempts: 3, baseMs: 200, maxMs: 500 },
      beforeWrite: (_s, signal) => lease.acquire(signal),
      context: (step, upstream, signal) => ({ settings, log: log.child({ step: step.name }), signal, credentials, adapters, upstream, progress: () => {} }),
    });
    await lease.release();
    store.close();
    adapters.kube.close();
    const ms = performance.now() - started;

    const pre = report(reports, 'preflight');
    assert.equal(pre.outcome, 'failed');
    assert.match(pre.error ?? '', new RegExp(`API server ${server.replace(/\./g, '\\.')} not ready after 4 s \\((\\d+) tries; last: connection refused\\); is k3s running\\?`));
    const tries = Number(/\((\d+) tries/.exec(pre.error ?? '')?.[1]);
    assert.ok(tries >= 3, `only ${tries} tries`);
    // The bound is on the /readyz wait: from the first failed try to the error. (The step as a whole
    // also reads and parses the credentials first, which a loaded machine makes slow.)
    const parsed = lines.map((l) => JSON.parse(l) as { time: string; step?: string; msg?: string; event?: string });
    const firstTry = parsed.find((l) => l.step === 'preflight' && /waiting for the API server \/readyz/.test(l.msg ?? ''));
    const gaveUp = parsed.find((l) => l.step === 'preflight' && l.event === 'finish');
    const waitedMs = Date.parse(gaveUp!.time) - Date.parse(firstTry!.time);
    assert.ok(waitedMs >= boundMs - 1500 && waitedMs < boundMs + 1500, `waited ${waitedMs} ms for /readyz`);
    assert.ok(pre.durationMs >= boundMs, `preflight took ${pre.durationMs} ms`);
    for (const s of ['cilium', 'cilium-crds', 'cilium-l2', 'age-key', 'argocd', 'root-appset']) assert.equal(report(reports, s).outcome, 'blocked', s);

    // Cloudflare needs no cluster: the tunnel and every record are made; only the token Secret
    // waits for the cluster, and its error names the server.
    assert.equal(site.emu.liveTunnels().length, 1);
    assert.equal(report(reports, 'tunnel').outcome, 'failed');
    assert.match(report(reports, 'tunnel').error ?? '', new RegExp(`tunnel homelab \\(.+\\) is in place, but Secret cloudflared/tunnel-token was not written: .*cannot reach the API server at ${server.replace(/\./g, '\\.')} \\(ECONNREFUSED\\)`));
    assert.equal(report(reports, 'dns').outcome, 'changed');
    assert.equal(site.emu.records(ZONE).length, 10);
    assert.ok(lines.some((l) => /cannot take Lease kube-system\/homelab-bootstrap .*writing without it/.test(l)), 'no word about writing without the lease');
    assert.ok(ms < boundMs + 15_000, `the run took ${ms} ms`);
  });

  it('credentials the apiserver refuses (401): one clear, unretried error, no token printed; Cloudflare still done', async () => {
    resetCloudflare();
    const badToken = 'expired-token-4f1e0c9a7b3d2e6f8a1b';
    const kubeconfig = join(site.dir, 'kubeconfig-bad-token');
    writeFileSync(kubeconfig, readFileSync(site.cp.kubeconfigPath, 'utf8').replace(site.cp.token, badToken), { mode: 0o600 });
    const run = await runToEnd({ ...site, config: configWith(kubeconfig, 'bad-token') }, { stateDir: join(site.dir, 'state-bad-token'), expect: 1 });
    const pre = run.lines.find((l) => l.step === 'preflight' && l.event === 'finish');
    assert.equal(pre?.outcome, 'failed');
    assert.equal(pre?.attempts, 1, 'a refused credential was retried');
    assert.match(String(pre?.err), new RegExp(`${site.cp.server.replace(/\./g, '\\.')}: HTTP 401: the kubeconfig ${kubeconfig} credentials are not accepted`));
    const everything = [...run.lines.map((l) => JSON.stringify(l)), ...run.text, ...run.stderr].join('\n');
    for (const secret of [badToken, site.cp.token, CF_TOKEN]) assert.ok(!everything.includes(secret), 'a token was printed');
    assert.equal(outcomes(run).dns, 'changed');
    assert.equal(site.emu.liveTunnels().length, 1);
    assert.equal(site.emu.records(ZONE).length, 10);
    assert.match(run.lines.find((l) => l.step === 'tunnel' && l.event === 'finish')?.err as string, /is in place, but Secret cloudflared\/tunnel-token was not written: .*HTTP 401/);
    assert.ok(run.ms < 30_000, `took ${run.ms} ms`);
  });

  it('the apiserver restarting in the middle of a run (during the argocd helm install): retried, and the run converges', async (t) => {
    resetCloudflare();
    apiserver = apiserverControl(site.cp);
    const stateDir = join(site.dir, 'state-restart');
    const run = startCli(site, { stateDir });
    await until('helm installs argocd', () => descendants(run.pid).some((d) => d.argv.includes('upgrade') && d.argv.includes('argocd')), 90_000, 10);
    await apiserver.stop();
    const downAt = performance.now();
    await new Promise((r) => setTimeout(r, 2000));
    const { readyMs } = await apiserver.start();
    t.diagnostic(`apiserver down ${Math.round(performance.now() - downAt)} ms (ready ${readyMs} ms after the restart)`);
    const e = await run.exited;
    assert.equal(e.code, 0, tail(run.lines, run.text, run.stderr, 40));
    const retried = run.lines.filter((l) => /attempt \d+ failed/.test(String(l.msg)));
    assert.ok(retried.length > 0, 'nothing was retried');
    t.diagnostic(`retried: ${retried.map((l) => `${l.step}: ${String(l.err).slice(0, 120)}`).join(' | ')}`);
    assert.equal(outcomes(run).tunnel, 'changed');
    assert.equal(outcomes(run).dns, 'changed');

    // Converged: nothing pending, nothing twice, and the next run has nothing to do.
    assert.deepEqual(helmList(site.cp).map((h) => `${h.name}:${h.status}`).sort(), ['argocd:deployed', 'cilium:deployed']);
    assert.deepEqual(duplicates(site), []);
    const again = await runToEnd(site, { stateDir });
    assert.equal(changeCount(again), 0, JSON.stringify(outcomes(again)));
    const secret = await kubeJson(site.cp.rig, 'GET', '/api/v1/namespaces/cloudflared/secrets/tunnel-token');
    assert.equal(secret.status, 200);
  });
});

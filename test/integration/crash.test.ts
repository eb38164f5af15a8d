// Crash consistency: `homelab-bootstrap apply` (the real CLI, a child process) is SIGKILLed, with
// the helm it runs, at every step boundary and in the middle of each write-heavy step, and then
// run again. Each time the site must end exactly where one clean run leaves another site: the
// same objects and Helm releases (none pending), the same DNS records (none twice), one tunnel,
// and neither the run lock nor the cluster lease of the dead run in the way.
//
// The step boundaries are one chain of runs on a fresh site: each run is killed right after the
// first step no earlier run was killed after logged its `finish`, so the next run starts from
// that state and is itself killed one boundary later; a last run completes. (A run per boundary
// from a fresh cluster would take several times as long.) The mid-step kills each start from the
// converged site with just the part under test undone, and their rerun must complete on its own.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { auditMark, countRequests } from '../rig/audit.ts';
import { binPath } from '../rig/binaries.ts';
import { kubeJson } from '../rig/kube-http.ts';
import {
  changeCount,
  descendants,
  duplicates,
  cleanRunEndState,
  endState,
  helmList,
  outcomes,
  runToEnd,
  startCli,
  startSite,
  until,
  ZONE,
  type CliRun,
  type EndState,
  type Site,
} from '../rig/bootstrap-run.ts';

let site: Site;
let reference: EndState;
let referenceReady: Promise<void>;
const stateDir = () => join(site.dir, 'state');

before(async () => {
  // The clean run on its own site goes on while the first test kills runs on the other; each
  // comparison awaits it.
  referenceReady = cleanRunEndState().then((r) => void (reference = r));
  referenceReady.catch(() => {}); // reported where awaited
  site = await startSite();
});

after(async () => {
  await site?.stop();
});

/** One line for the test report: what a killed run left behind. */
async function leftBehind(s: Site): Promise<string> {
  const helm = helmList(s.cp).map((h) => `${h.name}:${h.status}`);
  const secret = await kubeJson(s.cp.rig, 'GET', '/api/v1/namespaces/cloudflared/secrets/tunnel-token', { allow: [404] });
  const lease = await kubeJson<{ spec?: { holderIdentity?: string } }>(s.cp.rig, 'GET', '/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/homelab-bootstrap', { allow: [404] });
  return [
    `helm [${helm.join(' ')}]`,
    `tunnels ${s.emu.liveTunnels().length}`,
    `dns ${s.emu.records(ZONE).length}`,
    `token-secret ${secret.status === 200 ? 'yes' : 'no'}`,
    `lease ${lease.json?.spec?.holderIdentity ? 'held' : 'free'}`,
  ].join(', ');
}

/** After a kill: nothing duplicated, whatever the moment was. */
function assertNoDuplicates(s: Site, when: string): void {
  assert.deepEqual(duplicates(s), [], `after ${when}`);
}

async function rerunConverges(s: Site, when: string): Promise<void> {
  await referenceReady;
  const run = await runToEnd(s, { stateDir: stateDir() });
  assert.ok(!run.lines.some((l) => /is held by/.test(String(l.msg))), `after ${when}: the rerun waited for the dead run's lease`);
  assertNoDuplicates(s, when);
  assert.deepEqual(await endState(s), reference, `after ${when}`);
}

function helmUninstall(s: Site, name: string, namespace: string): void {
  const r = spawnSync(binPath('helm'), ['uninstall', name, '--namespace', namespace, '--wait', '--kubeconfig', join(s.cp.dir, 'rig-kubeconfig')], { encoding: 'utf8', env: { PATH: process.env.PATH, HOME: s.cp.dir } });
  if (r.status !== 0) throw new Error(`helm uninstall ${name}: ${r.stderr}`);
}

async function releaseStatus(s: Site, name: string, namespace: string, status: string): Promise<boolean> {
  const q = new URLSearchParams({ labelSelector: `owner=helm,name=${name},status=${status}` });
  const r = await kubeJson<{ items: unknown[] }>(s.cp.rig, 'GET', `/api/v1/namespaces/${namespace}/secrets?${q}`);
  return (r.json?.items.length ?? 0) > 0;
}

/**
 * Kills `run` once helm, run by it for `release`, has left the release `status` (pending-*): in
 * the middle of the operation. False when helm got through before that could be seen (the
 * window is a fraction of a second); the run is killed all the same.
 */
async function killMidHelm(s: Site, run: CliRun, release: string, namespace: string, status: string): Promise<boolean> {
  let helmSeen = false;
  let hit = false;
  await until(
    `helm ${release} is ${status}`,
    async () => {
      if (run.child.exitCode !== null) return true;
      const helmNow = descendants(run.pid).some((d) => /helm$/.test(d.argv[0] ?? '') && d.argv.includes(release) && d.argv.includes('upgrade'));
      if (helmSeen && !helmNow) return true; // helm finished: missed
      helmSeen ||= helmNow;
      hit = helmSeen && (await releaseStatus(s, release, namespace, status));
      return hit;
    },
    60_000,
    10,
  );
  await run.kill();
  return hit;
}

describe('apply killed with SIGKILL, then run again', () => {
  it('at every step boundary: the next run picks up from there, and the last one ends where a clean run does', async (t) => {
    // Steps run as a graph, several at once, so "a boundary" is any step's finish. Each run is
    // killed at the first finish of a step no earlier run was killed after: the kills land as
    // early as possible, one new boundary per run, until every step has had one.
    const all = ['preflight', 'cilium', 'cilium-crds', 'cilium-l2', 'age-key', 'argocd', 'tunnel', 'dns', 'root-appset'];
    const killedAfter: string[] = [];
    while (killedAfter.length < all.length) {
      const run = startCli(site, { stateDir: stateDir() });
      const line = await run.waitLine((l) => l.event === 'finish' && typeof l.step === 'string' && !killedAfter.includes(l.step), 'a step finished');
      await run.kill();
      killedAfter.push(line.step!);
      assert.ok(!run.lines.some((l) => l.event === 'finish' && l.outcome === 'failed'), `a step failed before the kill: ${JSON.stringify(outcomes(run))}`);
      assertNoDuplicates(site, `the kill after ${line.step}`);
      assert.ok(!run.lines.some((l) => /is held by/.test(String(l.msg))), 'a run waited for the lease of the run killed before it');
      t.diagnostic(`killed after ${line.step} finished ${line.outcome} (${Object.entries(outcomes(run)).map(([k, v]) => `${k}=${v}`).join(' ')}): ${await leftBehind(site)}`);
    }
    const last = await runToEnd(site, { stateDir: stateDir() });
    assert.ok(!last.lines.some((l) => /is held by/.test(String(l.msg))), 'the last run waited for a dead run’s lease');
    assertNoDuplicates(site, 'the chain');
    await referenceReady;
    assert.deepEqual(await endState(site), reference);
  });

  it('in the middle of `helm upgrade --install` of a new release (left pending-install)', async (t) => {
    let hit = false;
    for (let attempt = 1; attempt <= 3 && !hit; attempt++) {
      helmUninstall(site, 'cilium', 'kube-system');
      const run = startCli(site, { stateDir: stateDir() });
      hit = await killMidHelm(site, run, 'cilium', 'kube-system', 'pending-install');
      t.diagnostic(`attempt ${attempt}: killed during helm install of cilium${hit ? '' : ' (missed the pending window)'}: ${await leftBehind(site)}`);
      if (hit) assert.equal(helmList(site.cp).find((h) => h.name === 'cilium')?.status, 'pending-install');
      await rerunConverges(site, `the kill during the install of cilium (attempt ${attempt})`);
    }
    assert.ok(hit, 'never caught helm with the release pending-install');
  });

  it('in the middle of a `helm upgrade` of a deployed release (left pending-upgrade)', async (t) => {
    // A run with other values upgrades argocd and is killed mid-way; the next run (the real
    // settings again) rolls the stuck revision back and ends where a clean run does.
    let hit = false;
    for (let attempt = 1; attempt <= 3 && !hit; attempt++) {
      const changed = structuredClone(site.settings);
      changed.argocd.values = { ...(changed.argocd.values ?? {}), crashTest: { attempt } };
      const config = join(site.dir, `homelab-changed-${attempt}.json`);
      writeFileSync(config, JSON.stringify(changed, null, 2));
      const run = startCli({ ...site, config }, { stateDir: stateDir() });
      hit = await killMidHelm(site, run, 'argocd', 'argocd', 'pending-upgrade');
      t.diagnostic(`attempt ${attempt}: killed during helm upgrade of argocd${hit ? '' : ' (missed the pending window)'}: ${await leftBehind(site)}`);
      if (hit) assert.equal(helmList(site.cp).find((h) => h.name === 'argocd')?.status, 'pending-upgrade');
      await rerunConverges(site, `the kill during the upgrade of argocd (attempt ${attempt})`);
    }
    assert.ok(hit, 'never caught helm with the release pending-upgrade');
  });

  /** Undoes the Cloudflare side and the token Secret, so tunnel and dns have all their work to do again. */
  async function undoCloudflare(): Promise<void> {
    site.emu.clearFaults();
    site.emu.tunnels.clear();
    site.emu.zone(ZONE).records.clear();
    await kubeJson(site.cp.rig, 'DELETE', '/api/v1/namespaces/cloudflared/secrets/tunnel-token', { allow: [404] });
    site.emu.resetLog();
  }

  const requested = (method: string, path: RegExp) => site.emu.requests.filter((r) => r.method === method && path.test(r.path)).length;

  // (A tunnel made with its token Secret not yet written is also where the chain above gets killed.)
  it('while the tunnel create is in flight: made at Cloudflare, its answer never read, no token Secret yet', async (t) => {
    await undoCloudflare();
    site.emu.slow(30_000, { times: 1, match: { method: 'POST', path: /\/cfd_tunnel$/ } });
    const run = startCli(site, { stateDir: stateDir() });
    await until('the tunnel create reached the emulator', () => requested('POST', /\/cfd_tunnel$/) === 1);
    await run.kill();
    t.diagnostic(`killed with the tunnel create in flight: ${await leftBehind(site)}`);
    assert.equal(site.emu.liveTunnels().length, 1);
    assert.equal((await kubeJson(site.cp.rig, 'GET', '/api/v1/namespaces/cloudflared/secrets/tunnel-token', { allow: [404] })).status, 404);
    site.emu.clearFaults();
    await rerunConverges(site, 'the kill during the tunnel create');
    assert.equal(requested('POST', /\/cfd_tunnel$/), 1, 'the rerun created a second tunnel');
  });

  it('with the DNS creates half done (the fourth of nine carried out, its answer never read)', async (t) => {
    // The tunnel stays; only the records go.
    site.emu.clearFaults();
    site.emu.zone(ZONE).records.clear();
    site.emu.resetLog();
    site.emu.slow(400, { match: { method: 'POST', path: /\/dns_records$/ } });
    const run = startCli(site, { stateDir: stateDir() });
    await until('the fourth DNS create reached the emulator', () => requested('POST', /\/dns_records$/) >= 4, 30_000, 5);
    await run.kill();
    const left = site.emu.records(ZONE).length;
    t.diagnostic(`killed with DNS creates half done: ${await leftBehind(site)}`);
    await referenceReady;
    assert.ok(left >= 4 && left < reference.dns.length, `${left} records at the kill`);
    site.emu.clearFaults();
    site.emu.resetLog();
    await rerunConverges(site, 'the kill during the DNS creates');
    assert.equal(requested('POST', /\/dns_records$/), reference.dns.length - left, 'the rerun created a record that was there');
  });

  it('after all of that, a run has nothing to do: no change, no write (the lease included)', async () => {
    const mark = await auditMark(site.cp);
    site.emu.resetLog();
    const idle = await runToEnd(site, { stateDir: stateDir() });
    assert.equal(changeCount(idle), 0);
    assert.equal((await countRequests(site.cp, { since: mark })).writes, 0);
    assert.equal(site.emu.writes().length, 0);
  });
});

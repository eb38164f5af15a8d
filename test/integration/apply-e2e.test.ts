// The whole program as an operator runs it: the real CLI, every step, against a real
// kube-apiserver with controllers and a kwok node, real helm with the real charts, and the
// Cloudflare emulator. Cold apply, no-op apply, plan's exit
// codes and field diffs, and one changed setting touching exactly what it should.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { auditMark, countRequests } from '../rig/audit.ts';
import { binPath, repoRoot } from '../rig/binaries.ts';
import { startSite, ZONE, type Site } from '../rig/bootstrap-run.ts';

let site: Site;
let cp: Site['cp'];
let emu: Site['emu'];
let settings: Record<string, any>;
const config = () => site.config;

const cli = (...args: string[]) => cliAt(join(repoRoot, 'src', 'cli.ts'), ...args);

function cliAt(entry: string, ...args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [entry, ...args, '--state-dir', join(site.dir, 'state')], { env: site.env });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code: code ?? -1, out, err }));
  });
}

function helmRevisions(release: string, ns: string): number {
  const out = execFileSync(binPath('helm'), ['history', release, '-n', ns, '-o', 'json', '--kubeconfig', cp.kubeconfigPath], { encoding: 'utf8' });
  return (JSON.parse(out) as unknown[]).length;
}

before(async () => {
  // No Cilium CRDs: the cold apply below waits for the stand-in operator, which registers them once cilium-operator's Pod runs.
  site = await startSite({ ciliumCrds: false });
  ({ cp, emu, settings } = site);
});

after(async () => {
  await site?.stop();
});

test('plan on an empty cluster exits 2 and lists what apply will create', async () => {
  const r = await cli('plan', '--config', config());
  assert.equal(r.code, 2, r.out + r.err);
  assert.match(r.out, /\+ create .*cilium/);
  assert.match(r.out, /\+ create DNS A sonarr\.peterstorm\.io/i);
  assert.equal(emu.writes().length, 0, 'plan wrote to Cloudflare');
});

test('cold apply converges every step, waiting for Cilium’s Pods and then for the CRDs its operator registers', async () => {
  const r = await cli('apply', '--config', config());
  assert.equal(r.code, 0, r.out + r.err);
  assert.deepEqual(await site.operator?.done, ['ciliuml2announcementpolicies.cilium.io', 'ciliumloadbalancerippools.cilium.io'].sort(), 'the CRDs came from the stand-in operator');
  assert.match(r.out, /cilium is ready: DaemonSet kube-system\/cilium: ready \(1 of 1\); Deployment kube-system\/cilium-operator: ready \(1 of 1\)/);
  assert.match(r.out, /apply: 10 steps, \d+ changes, 0 failed/);
  const lines = r.out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.ok(lines.length > 0 && lines.every((l) => typeof l.msg === 'string'), 'JSON log lines with a readable msg');
  assert.ok(lines.filter((l) => l.event === 'finish').every((l) => typeof l.step === 'string' && typeof l.durationMs === 'number'));
  assert.equal(emu.records(ZONE).length, 10);
  assert.equal(emu.liveTunnels().length, 1);
});

test('a second apply writes nothing anywhere and makes no Helm revision; plan exits 0', async () => {
  const mark = await auditMark(cp);
  emu.resetLog();
  const r = await cli('apply', '--config', config());
  assert.equal(r.code, 0, r.out + r.err);
  assert.match(r.out, /apply: 10 steps, 0 changes, 0 failed/);
  const counts = await countRequests(cp, { since: mark });
  assert.equal(counts.writes, 0, `writes: ${JSON.stringify(counts.byResource)}`);
  assert.ok(counts.reads > 0);
  assert.equal(emu.writes().length, 0);
  assert.equal(helmRevisions('cilium', 'kube-system'), 1);
  assert.equal(helmRevisions('argocd', 'argocd'), 1);
  const plan = await cli('plan', '--config', config());
  assert.equal(plan.code, 0, plan.out);
});

test('once read, Helm’s release records are not read again while unchanged; a new revision by someone else is', async () => {
  const helmRecordReads = (c: Awaited<ReturnType<typeof countRequests>>) => c.events.filter((e) => e.verb === 'get' && e.objectRef?.resource === 'secrets' && e.objectRef.name?.startsWith('sh.helm.release.')).map((e) => e.objectRef!.name);
  let mark = await auditMark(cp);
  let r = await cli('apply', '--config', config());
  assert.equal(r.code, 0, r.out + r.err);
  let counts = await countRequests(cp, { since: mark });
  assert.deepEqual(helmRecordReads(counts), [], 'a no-op read a release record it had read before');
  assert.ok(counts.events.some((e) => e.verb === 'list' && e.objectRef?.resource === 'secrets' && e.objectRef.namespace === 'argocd'), 'the history is still listed');
  // helm itself writes a new revision with other values; the daemon must see it and set it back.
  execFileSync(binPath('helm'), ['upgrade', 'argocd', settings.argocd.chart.path, '--namespace', 'argocd', '--reuse-values', '--set', 'global.revisionHistoryLimit=4', '--kubeconfig', cp.kubeconfigPath], { encoding: 'utf8' });
  mark = await auditMark(cp);
  r = await cli('plan', '--config', config());
  assert.equal(r.code, 2, r.out + r.err);
  assert.match(r.out, /\$\.values\.global\.revisionHistoryLimit/);
  counts = await countRequests(cp, { since: mark });
  assert.deepEqual(helmRecordReads(counts), ['sh.helm.release.v1.argocd.v2']);
  r = await cli('apply', '--config', config());
  assert.equal(r.code, 0, r.out + r.err);
  assert.equal(helmRevisions('argocd', 'argocd'), 3);
});

test('the built daemon (dist/, what the Nix package runs) finds the converged site converged, Cloudflare included', async () => {
  // Built apart from dist/ so that a bench or demo of the developer's is left alone.
  const out = join(repoRoot, `.dist-test-${process.pid}`);
  try {
    execFileSync(process.execPath, [join(repoRoot, 'scripts', 'build.ts'), '--outdir', out], { encoding: 'utf8' });
    // The Cloudflare SDK's client alone imports every resource of the API (megabytes); the
    // bundle keeps the few the adapter calls.
    const sdk = readdirSync(out).filter((f) => f.startsWith('cloudflare-sdk-'));
    assert.equal(sdk.length, 1, `one Cloudflare SDK chunk expected: ${readdirSync(out).join(', ')}`);
    const size = statSync(join(out, sdk[0]!)).size;
    assert.ok(size < 300_000, `the Cloudflare SDK chunk is ${size} bytes: the tree-shaking of unused API resources was lost`);
    const version = execFileSync(process.execPath, [join(out, 'cli.js'), '--version'], { encoding: 'utf8' }).trim();
    assert.equal(version, (JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version);
    emu.resetLog();
    const r = await cliAt(join(out, 'cli.js'), 'apply', '--config', config());
    assert.equal(r.code, 0, r.out + r.err);
    assert.match(r.out, /apply: 10 steps, 0 changes, 0 failed/);
    assert.equal(emu.writes().length, 0);
    assert.ok(emu.requests.some((q) => q.method === 'GET' && /\/dns_records/.test(q.path)), 'the built daemon did not read the DNS records');
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test('one changed setting: plan shows the field diff and exits 2; apply writes exactly that', async () => {
  settings.network.lbPool.stop = '192.168.0.245';
  writeFileSync(config(), JSON.stringify(settings));
  const plan = await cli('plan', '--config', config());
  assert.equal(plan.code, 2, plan.out + plan.err);
  assert.match(plan.out, /~ update CiliumLoadBalancerIPPool homelab/);
  assert.match(plan.out, /\$\.spec\.blocks\[0\]\.stop: "192\.168\.0\.250" -> "192\.168\.0\.245"/);
  const mark = await auditMark(cp);
  const r = await cli('apply', '--config', config());
  assert.equal(r.code, 0, r.out + r.err);
  const counts = await countRequests(cp, { since: mark });
  // Besides the pool, only the run's own bootstrap Lease (taken because something changed).
  assert.deepEqual(
    Object.entries(counts.byResource).filter(([k]) => /^(create|update|patch|delete) /.test(k) && !k.endsWith(' leases')),
    [['patch ciliumloadbalancerippools', 1]],
  );
  assert.equal(helmRevisions('cilium', 'kube-system'), 1, 'the pool is not a Helm value');
});

test('a Helm value change shows as a values diff and makes exactly one new revision', async () => {
  settings.cilium.values = { hubble: { relay: { enabled: false }, ui: { enabled: false } } };
  writeFileSync(config(), JSON.stringify(settings));
  const plan = await cli('plan', '--config', config());
  assert.equal(plan.code, 2);
  assert.match(plan.out, /\$\.values\.hubble\.relay\.enabled: true -> false/);
  assert.equal((await cli('apply', '--config', config())).code, 0);
  assert.equal(helmRevisions('cilium', 'kube-system'), 2);
  assert.equal((await cli('plan', '--config', config())).code, 0);
});

test('status shows the last apply per step', async () => {
  const r = await cli('status');
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /last run: apply .* ok/);
  for (const step of ['preflight', 'cilium', 'dns', 'root-appset']) assert.match(r.out, new RegExp(`^${step} `, 'm'));
});

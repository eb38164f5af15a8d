import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { main, EXIT, VERSION } from '../../src/cli.ts';
import { recordRun } from '../../src/engine/state.ts';

const example = new URL('../../examples/homelab.json', import.meta.url).pathname;
const golden = new URL('../fixtures/golden/render-homelab.yaml', import.meta.url).pathname;

async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(argv, { out: (t) => void (out += t), err: (t) => void (err += t) });
  return { code, out, err };
}

test('--version prints the package version', async () => {
  const r = await run('--version');
  assert.equal(r.code, EXIT.ok);
  assert.equal(r.out.trim(), VERSION);
  assert.match(VERSION, /^\d+\.\d+\.\d+/);
});

test('validate-config accepts the example', async () => {
  const r = await run('validate-config', example);
  assert.equal(r.code, EXIT.ok, r.err);
});

test('validate-config warns (stderr, exit 0) about an external host deeper than one level under its zone, naming it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'hb-cli-'));
  const s = JSON.parse(readFileSync(example, 'utf8'));
  // A deep local host needs no certificate from Cloudflare: no warning for it.
  s.hosts.push({ name: 'app.lab.peterstorm.io', access: 'local' }, { name: 'shop.lab.peterstorm.io', access: 'external' });
  const file = join(dir, 'deep.json');
  writeFileSync(file, JSON.stringify(s));
  const r = await run('validate-config', file);
  assert.equal(r.code, EXIT.ok, r.err);
  assert.match(r.out, /valid/);
  assert.equal(r.err.trim().split('\n').length, 1, r.err);
  assert.match(r.err, /warning: \$\.hosts\[11\] \(shop\.lab\.peterstorm\.io\): 2 levels below the zone peterstorm\.io; Cloudflare's free Universal SSL certificate/);
  assert.equal((await run('validate-config', example)).err, '');
});

test('validate-config on a broken file exits 65 naming the JSON path and the value', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'hb-cli-'));
  const s = JSON.parse(readFileSync(example, 'utf8'));
  s.network.lbPool.stop = '192.168.0.230';
  s.hosts[2].access = 'internet';
  const file = join(dir, 'bad.json');
  writeFileSync(file, JSON.stringify(s));
  const r = await run('validate-config', file);
  assert.equal(r.code, EXIT.badSettings);
  assert.match(r.err, /\$\.hosts\[2\]\.access: got "internet"/);
  assert.ok(r.err.includes(file));
});

test('validate-config --check-files names each missing credential by field', async () => {
  const r = await run('validate-config', example, '--check-files');
  assert.equal(r.code, EXIT.badSettings);
  assert.match(r.err, /\$\.sops\.ageKeyFile: \/var\/lib\/sops-nix\/keys\.txt does not exist/);
  assert.match(r.err, /\$\.cloudflare\.apiTokenFile: /);
});

test('render is deterministic and matches the golden output for examples/homelab.json', async () => {
  const a = await run('render', '--config', example);
  const b = await run('render', '--config', example);
  assert.equal(a.code, EXIT.ok, a.err);
  assert.equal(a.out, b.out, 'same input, same bytes');
  if (process.env.UPDATE_GOLDEN === '1' || !existsSync(golden)) writeFileSync(golden, a.out);
  assert.equal(a.out, readFileSync(golden, 'utf8'), 'render changed: review, then UPDATE_GOLDEN=1 npm test');
});

test('render --output json parses and holds every part of the desired state', async () => {
  const r = await run('render', '--config', example, '--output', 'json');
  assert.equal(r.code, EXIT.ok, r.err);
  const out = JSON.parse(r.out);
  assert.deepEqual(out.helmReleases.map((h: any) => `${h.namespace}/${h.name}`), ['kube-system/cilium', 'argocd/argocd']);
  assert.deepEqual(out.dns.map((z: any) => [z.zone, z.records.length]), [['peterstorm.io', 10]]);
  assert.equal(out.tunnel.ingress.at(-1).service, 'http_status:404');
  const kinds = out.objects.map((o: any) => o.kind);
  for (const k of ['CiliumLoadBalancerIPPool', 'CiliumL2AnnouncementPolicy', 'ApplicationSet']) assert.ok(kinds.includes(k), `render lacks ${k}`);
});

test('render reads no secret: it works with every credential file missing', async () => {
  // examples/homelab.json points at paths that do not exist here.
  const r = await run('render', '--config', example);
  assert.equal(r.code, EXIT.ok);
  assert.doesNotMatch(r.out, /AGE-SECRET-KEY/);
});

test('usage errors exit 64', async () => {
  assert.equal((await run('frobnicate')).code, EXIT.usage);
  assert.equal((await run('render')).code, EXIT.usage);
  assert.equal((await run('render', '--config', example, '--output', 'toml')).code, EXIT.usage);
  const r = await run('apply', '--config', example, '--only', 'dnss');
  assert.equal(r.code, EXIT.usage);
  assert.match(r.err, /unknown step\(s\) in --only: dnss/);
  assert.equal((await run('doctor')).code, EXIT.usage);
  const c = await run('check-repo', '--config', example);
  assert.equal(c.code, EXIT.usage);
  assert.match(c.err, /check-repo needs --repo DIR/);
});

test('status reports the last run per step from the state directory', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'hb-state-'));
  assert.match((await run('status', '--state-dir', dir)).out, /no run recorded/);
  recordRun(dir, 'apply', Date.now() - 1000, [
    { step: 'preflight', outcome: 'unchanged', changes: [], startedAt: new Date().toISOString(), durationMs: 12, attempts: 1 },
    { step: 'dns', outcome: 'failed', changes: [], error: 'zone not found', startedAt: new Date().toISOString(), durationMs: 40, attempts: 3 },
  ]);
  const r = await run('status', '--state-dir', dir);
  assert.equal(r.code, EXIT.failed);
  assert.match(r.out, /last run: apply .* FAILED/);
  assert.match(r.out, /dns +failed .*zone not found/);
});

test('status of a run that converged except for reported DNS conflicts: ok, and exit 4 like the run', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'hb-state-'));
  recordRun(dir, 'apply', Date.now() - 1000, [
    { step: 'tunnel', outcome: 'unchanged', changes: [], startedAt: new Date().toISOString(), durationMs: 12, attempts: 1 },
    { step: 'dns', outcome: 'conflict', changes: [{ action: 'conflict', target: 'DNS A sonarr.example.org (zone example.org)' }], error: '1 DNS record not written because of a conflict', startedAt: new Date().toISOString(), durationMs: 40, attempts: 1 },
  ]);
  const r = await run('status', '--state-dir', dir);
  assert.equal(r.code, EXIT.conflicts);
  assert.equal(EXIT.conflicts, 4);
  assert.match(r.out, /last run: apply .* ok, 0 changes/);
  assert.match(r.out, /dns +conflict .*because of a conflict/);
});

test('doctor with a kubeconfig that does not exist: exit 1 at once, naming the file', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'hb-doctor-cli-'));
  const settings = JSON.parse(readFileSync(example, 'utf8')) as Record<string, unknown>;
  settings.kubeconfigFile = join(dir, 'missing.yaml');
  const file = join(dir, 'settings.json');
  writeFileSync(file, JSON.stringify(settings));
  const started = performance.now();
  const r = await run('doctor', '--config', file, '--skip-host');
  assert.equal(r.code, EXIT.failed);
  assert.match(r.err, /^doctor: cannot check the cluster: kubeconfig .*missing\.yaml does not exist$/m);
  assert.ok(performance.now() - started < 5000);
});

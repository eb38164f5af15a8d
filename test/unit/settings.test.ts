import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { parseSettings, SettingsError, loadSettings } from '../../src/settings/load.ts';

const example = JSON.parse(readFileSync(new URL('../../examples/homelab.json', import.meta.url), 'utf8')) as Record<string, any>;
const clone = (): Record<string, any> => structuredClone(example);

function problemsOf(input: unknown): string[] {
  try {
    parseSettings(input);
  } catch (e) {
    assert.ok(e instanceof SettingsError, `expected a SettingsError, got ${e}`);
    return e.problems;
  }
  assert.fail('settings were accepted');
}

function rejects(mutate: (s: Record<string, any>) => void, path: string, ...words: string[]) {
  const s = clone();
  mutate(s);
  const problems = problemsOf(s);
  const hit = problems.find((p) => p.startsWith(`${path}:`) || p.startsWith(`${path} `));
  assert.ok(hit, `no problem at ${path} in:\n${problems.join('\n')}`);
  for (const w of words) assert.ok(hit.includes(w), `"${hit}" does not mention "${w}"`);
}

test('the example homelab is valid and gets the defaults', () => {
  const s = loadSettings(new URL('../../examples/homelab.json', import.meta.url).pathname);
  assert.equal(s.hosts.length, 10);
  assert.deepEqual(s.network.apiServer, { host: '127.0.0.1', port: 6444 });
  assert.equal(s.sops.ageKeyFile, '/var/lib/sops-nix/keys.txt');
  assert.equal(s.kubeconfigFile, '/etc/rancher/k3s/k3s.yaml');
  assert.ok('version' in s.cilium.chart && /^\d+\.\d+\.\d+$/.test(s.cilium.chart.version), 'cilium chart pinned');
  assert.ok('version' in s.argocd.chart && s.argocd.chart.version === '10.1.1');
  assert.deepEqual(s.gitops.groups, ['infra', 'apps', 'media']);
});

test('an IP that is not an IP names its path and value', () => rejects((s) => (s.network.ingressIP = 'nope'), '$.network.ingressIP', '"nope"', 'IPv4'));
test('ingress VIP outside the pool', () => rejects((s) => (s.network.ingressIP = '192.168.0.10'), '$.network.ingressIP', '192.168.0.10', 'inside the pool'));
test('a host ip outside the pool', () => rejects((s) => (s.hosts[6].ip = '10.0.0.5'), '$.hosts[6].ip', '10.0.0.5', 'pool'));
test('a pool with stop < start', () => rejects((s) => (s.network.lbPool = { start: '192.168.0.250', stop: '192.168.0.240' }), '$.network.lbPool', 'below start'));
test('a duplicate host', () => rejects((s) => s.hosts.push({ name: 'sonarr', access: 'local' }), '$.hosts[10].name', 'sonarr.peterstorm.io', '$.hosts[1]'));
test('a host in both DNS types (same name external and local)', () =>
  rejects((s) => s.hosts.push({ name: 'Echo-Server.peterstorm.io', access: 'local' }), '$.hosts[10].name', 'either external'));
test('an unknown access mode', () => rejects((s) => (s.hosts[0].access = 'public'), '$.hosts[0].access', '"public"', 'external'));
test('an external host with an ip', () => rejects((s) => (s.hosts[0].ip = '192.168.0.242'), '$.hosts[0].ip', 'tunnel'));
test('a local host with a tunnel service', () => rejects((s) => (s.hosts[1].service = 'http://x:80'), '$.hosts[1].service', 'external'));
test('a host outside the domain', () => rejects((s) => (s.hosts[1].name = 'sonarr.example.org'), '$.hosts[1].name', 'peterstorm.io'));
test('an unknown field is named', () => rejects((s) => (s.netwrok = {}), '$.netwrok', 'unknown field'));
test('a missing required field', () => rejects((s) => delete s.domain, '$.domain', 'required'));
test('a relative credential path', () => rejects((s) => (s.cloudflare.apiTokenFile = 'token.txt'), '$.cloudflare.apiTokenFile', 'absolute'));
test('an unpinned chart version', () => rejects((s) => (s.cilium = { chart: { repo: 'https://helm.cilium.io', chart: 'cilium', version: 'latest' } }), '$.cilium.chart.version', 'pinned'));
test('a bad account id', () => rejects((s) => (s.cloudflare.accountId = 'abc'), '$.cloudflare.accountId', '32-hex'));
test('a zone that does not contain the domain', () => rejects((s) => (s.cloudflare.zone = 'example.org'), '$.cloudflare.zone', 'peterstorm.io'));
test('a chart may be a local path (Nix store)', () => {
  const s = clone();
  s.cilium = { chart: { path: '/nix/store/abc-cilium-1.18.4.tgz' } };
  assert.deepEqual(parseSettings(s).cilium.chart, { path: '/nix/store/abc-cilium-1.18.4.tgz' });
});
test('every problem is reported at once, each with a JSON path', () => {
  const s = clone();
  s.network.ingressIP = 'x';
  s.hosts[0].access = 'y';
  const problems = problemsOf(s);
  assert.equal(problems.length, 2);
  for (const p of problems) assert.match(p, /^\$\./);
});
test('unreadable and non-JSON files are clear errors', () => {
  assert.throws(() => loadSettings('/nonexistent/settings.json'), /\/nonexistent\/settings.json: invalid settings:\n.*the settings file does not exist; pass a JSON file with --config/);
  assert.throws(() => loadSettings(new URL('../../package-lock.json', import.meta.url).pathname.replace('package-lock.json', 'README.md')), /not valid JSON at line \d+, column \d+/);
});
test('a TTL Cloudflare would refuse', () => rejects((s) => (s.hosts[1].ttl = 30), '$.hosts[1].ttl', '60-86400'));
test('chart values nested absurdly deep are refused, not a stack overflow later', () => {
  let deep: Record<string, unknown> = {};
  for (let i = 0; i < 5000; i++) deep = { a: deep };
  rejects((s) => (s.cilium = { values: deep }), '$.cilium.values', 'at most 64 levels');
});

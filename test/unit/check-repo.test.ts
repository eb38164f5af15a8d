// check-repo's pure checks: sops creation rules, the example key, ksops generators, and the
// agreement between the tree's Ingress hosts and the settings' hosts table, on the shipped tree
// and on small trees made here. Decryption with the real sops is in the integration test.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileRecipients, generatorProblems, hostProblems, parseSopsConfig, ruleFor, sopsProblems, type SopsConfig } from '../../src/check-repo/checks.ts';
import { readTree } from '../../src/check-repo/tree.ts';
import { daemonServedHosts } from '../../src/check-repo/check-repo.ts';
import { EXAMPLE_AGE_RECIPIENT } from '../../src/gitops/example-key.ts';
import { loadSettings, parseSettings } from '../../src/settings/load.ts';
import { repoRoot } from '../rig/binaries.ts';

const HOST = 'age1lzd99uklcjnc0e7d860axevet2cz99ce9pq6tzuzd05l5nr28ams36nvun';
const OTHER = 'age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p';

function tree(files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), 'hb-check-repo-unit-'));
  for (const [p, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, p)), { recursive: true });
    writeFileSync(join(root, p), text);
  }
  return root;
}

const encrypted = (recipient: string) => `apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\nstringData:\n  password: ENC[AES256_GCM,data:xx,iv:yy,tag:zz,type:str]\nsops:\n  age:\n    - recipient: ${recipient}\n      enc: |\n        -----BEGIN AGE ENCRYPTED FILE-----\n        -----END AGE ENCRYPTED FILE-----\n  version: 3.11.0\n`;

test('the shipped .sops.yaml: one rule for the tree, anchors resolved, still the example key', () => {
  const c = parseSopsConfig(readFileSync(join(repoRoot, '.sops.yaml'), 'utf8'), '.sops.yaml') as SopsConfig;
  assert.equal(c.rules.length, 1);
  assert.deepEqual(c.rules[0]!.recipients, [EXAMPLE_AGE_RECIPIENT]);
  assert.equal(ruleFor(c, 'manifests/argocd-homelab/media/transmission/secrets.enc.yaml')?.index, 0);
  assert.equal(ruleFor(c, 'elsewhere/secrets.enc.yaml'), undefined);
});

test('recipients as a comma string, in key_groups, and a catch-all rule', () => {
  const c = parseSopsConfig(`creation_rules:\n  - path_regex: a/.*\n    age: "${HOST}, ${OTHER}"\n  - key_groups:\n      - age: [${OTHER}]\n`, '.sops.yaml') as SopsConfig;
  assert.deepEqual(c.rules[0]!.recipients, [HOST, OTHER]);
  assert.equal(ruleFor(c, 'b/x.enc.yaml')?.index, 1);
  assert.match((parseSopsConfig('keys: []\n', '.sops.yaml') as { message: string }).message, /no creation_rules/);
  assert.match((parseSopsConfig('creation_rules: [\n', '.sops.yaml') as { message: string }).message, /not valid YAML/);
});

test('sops problems: no matching rule, a rule without the host key, the example key in a rule and in a file', () => {
  const root = tree({
    'gitops/a/secrets.enc.yaml': encrypted(HOST),
    'gitops/b/secrets.enc.yaml': encrypted(EXAMPLE_AGE_RECIPIENT),
    'other/c.enc.yaml': encrypted(HOST),
  });
  const t = readTree(root, 'gitops');
  assert.deepEqual(t.encrypted, ['gitops/a/secrets.enc.yaml', 'gitops/b/secrets.enc.yaml']);
  const recipientsOf = (f: string) => fileRecipients(readFileSync(join(root, f), 'utf8'));
  const good = parseSopsConfig(`creation_rules:\n  - path_regex: gitops/.*\\.enc\\.(yaml|json)$\n    key_groups: [{ age: [${HOST}] }]\n`, '.sops.yaml') as SopsConfig;
  const p1 = sopsProblems(t, good, '', [HOST], recipientsOf);
  assert.deepEqual(p1.map((p) => p.file), ['gitops/b/secrets.enc.yaml']);
  assert.match(p1[0]!.message, /encrypted to the shipped example key/);

  const bad = parseSopsConfig(`creation_rules:\n  - path_regex: gitops/a/.*\n    age: ${EXAMPLE_AGE_RECIPIENT}\n`, '.sops.yaml') as SopsConfig;
  const p2 = sopsProblems(t, bad, '', [HOST], recipientsOf).map((p) => `${p.file}: ${p.message}`);
  assert.ok(p2.some((l) => /^\.sops\.yaml: creation rule 1 \(path_regex gitops\/a\/\.\*\) does not list the host key's recipient age1lzd/.test(l)), p2.join('\n'));
  assert.ok(p2.some((l) => /^\.sops\.yaml: creation rule 1 .*still lists the shipped example key/.test(l)), p2.join('\n'));
  assert.ok(p2.some((l) => /^gitops\/b\/secrets\.enc\.yaml: no creation rule in \.sops\.yaml matches it/.test(l)), p2.join('\n'));
});

test('a .sops.yaml in a subdirectory matches paths relative to itself', () => {
  const root = tree({ 'gitops/a/s.enc.yaml': encrypted(HOST) });
  const t = readTree(root, 'gitops');
  const c = parseSopsConfig(`creation_rules:\n  - path_regex: ^a/.*\\.enc\\.yaml$\n    age: ${HOST}\n`, 'gitops/.sops.yaml') as SopsConfig;
  assert.deepEqual(sopsProblems(t, c, 'gitops', [HOST], () => [HOST]), []);
});

test('ksops generators: every file they name exists (relative to the generator)', () => {
  const gen = (files: string[]) => `apiVersion: viaduct.ai/v1\nkind: ksops\nmetadata:\n  name: g\nfiles:\n${files.map((f) => `  - ${f}\n`).join('')}`;
  const root = tree({
    'gitops/a/ksops-generator.yaml': gen(['./secrets.enc.yaml']),
    'gitops/a/secrets.enc.yaml': encrypted(HOST),
    'gitops/b/ksops-generator.yaml': gen(['./secret.enc.yaml', 'token=../a/secrets.enc.yaml']),
    'gitops/b/secrets.enc.yaml': encrypted(HOST),
  });
  const p = generatorProblems(readTree(root, 'gitops'));
  assert.equal(p.length, 1);
  assert.equal(p[0]!.file, 'gitops/b/ksops-generator.yaml');
  assert.match(p[0]!.message, /names \.\/secret\.enc\.yaml, which does not exist \(gitops\/b\/secret\.enc\.yaml\)/);
});

test('ksops v4 generators: secretFrom[].files are checked too; a generator with no files at all is a problem', () => {
  const v4 = (files: string[]) => `apiVersion: viaduct.ai/v1\nkind: ksops\nmetadata:\n  name: v4\nsecretFrom:\n  - metadata:\n      name: s\n    type: Opaque\n    files:\n${files.map((f) => `      - ${f}\n`).join('')}`;
  const root = tree({
    'gitops/a/ksops-generator.yaml': v4(['./secrets.enc.yaml', 'token=./token.enc.yaml']),
    'gitops/a/secrets.enc.yaml': encrypted(HOST),
    'gitops/a/token.enc.yaml': encrypted(HOST),
    'gitops/b/ksops-generator.yaml': v4(['./gone.enc.yaml']),
    'gitops/c/ksops-generator.yaml': 'apiVersion: viaduct.ai/v1\nkind: ksops\nmetadata:\n  name: empty\nsecretFrom:\n  - metadata:\n      name: s\n',
  });
  const p = generatorProblems(readTree(root, 'gitops')).map((x) => `${x.file}: ${x.message}`);
  assert.equal(p.length, 2, p.join('\n'));
  assert.match(p[0]!, /^gitops\/b\/ksops-generator\.yaml: ksops generator v4 names \.\/gone\.enc\.yaml, which does not exist/);
  assert.match(p[1]!, /^gitops\/c\/ksops-generator\.yaml: is a ksops generator without files:/);
});

test('the shipped tree: its generators are complete and its hosts agree with examples/homelab.json', () => {
  const settings = loadSettings(join(repoRoot, 'examples', 'homelab.json'));
  const t = readTree(repoRoot, settings.gitops.path);
  assert.ok(t.encrypted.length >= 2);
  assert.deepEqual(generatorProblems(t), []);
  assert.deepEqual(hostProblems(t, settings, 'examples/homelab.json', daemonServedHosts(settings)), []);
});

test('hosts: an Ingress host missing from settings, a settings host nothing serves, a dedicated ip without its Service', () => {
  const settings = loadSettings(join(repoRoot, 'examples', 'homelab.json'));
  const t = readTree(repoRoot, settings.gitops.path);
  const s = parseSettings({
    ...structuredClone(settings),
    hosts: [...settings.hosts.filter((h) => h.name !== 'sonarr' && h.name !== 'plex'), { name: 'wiki', access: 'local' }, { name: 'plex', access: 'local', ip: '192.168.0.242' }, { name: 'vllm', access: 'external', service: 'http://192.168.0.80:8090' }],
  });
  const p = hostProblems(t, s, 'homelab.json', daemonServedHosts(s)).map((x) => `${x.file}: ${x.message}`);
  assert.equal(p.length, 3, p.join('\n'));
  assert.match(p[0]!, /^manifests\/argocd-homelab\/media\/sonarr\/ingress\.yaml: Ingress sonarr serves sonarr\.peterstorm\.io, which has no entry in the hosts table of homelab\.json/);
  assert.ok(p.some((l) => /^homelab\.json: host wiki\.peterstorm\.io \(local\) is served by no Ingress/.test(l)), p.join('\n'));
  assert.ok(p.some((l) => /^homelab\.json: host plex\.peterstorm\.io points at 192\.168\.0\.242, but no LoadBalancer Service/.test(l)), p.join('\n'));
});

test("hosts served by the daemon's own charts (Argo CD, an Ingress in the Cilium values) need no Ingress in the tree", async () => {
  const { valuesIngressHosts } = await import('../../src/check-repo/checks.ts');
  const settings = loadSettings(join(repoRoot, 'examples', 'homelab.json'));
  const t = readTree(repoRoot, settings.gitops.path);
  const s = settings; // its hosts table has `hubble`, served by the Cilium chart's Hubble UI Ingress
  assert.ok(s.hosts.some((h) => h.name === 'hubble'));
  const daemon: string[] = [];
  valuesIngressHosts({ hubble: { ui: { ingress: { enabled: true, hosts: ['hubble.peterstorm.io'] } } }, other: { ingress: { enabled: false, hosts: ['off.peterstorm.io'] } } }, daemon);
  assert.deepEqual(daemon, ['hubble.peterstorm.io']);
  assert.deepEqual(hostProblems(t, s, 'homelab.json', daemon), []);
  assert.match(hostProblems(t, s, 'homelab.json').map((p) => p.message).join('\n'), /host hubble\.peterstorm\.io \(local\) is served by no Ingress/);
});

// `check-repo` with the real sops and age: a good tree passes; a file encrypted to another key, a
// .sops.yaml without the host's recipient, a generator naming a missing file and a file still
// encrypted to the shipped example key each fail, naming the file; and no output ever holds a
// secret value or a byte of key material. The keys and encrypted files are made here, per run.
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { binDir, repoRoot } from '../rig/binaries.ts';
import { ageKeygen, encryptInto, ksopsGenerator, secretYaml, sopsConfig, write, type AgeKey } from '../rig/sops-tree.ts';
import { EXAMPLE_AGE_RECIPIENT } from '../../src/gitops/example-key.ts';

const CLI = join(repoRoot, 'src', 'cli.ts');
const RULE = 'gitops/.*\\.enc\\.(yaml|json)$';
const SECRET_VALUE = `hunter2-${Math.random().toString(36).slice(2)}-vpn-password`;

let dir: string;
let good: string;
let host: AgeKey;
let other: AgeKey;
let config: string;
const outputs: string[] = [];

function checkRepo(repo: string, env: NodeJS.ProcessEnv = {}): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'check-repo', '--config', config, '--repo', repo], { timeout: 120_000, env: { PATH: `${binDir()}:${process.env.PATH}`, HOME: dir, ...env } }, (err, stdout, stderr) => {
      const r = { code: err ? Number((err as { code?: number }).code ?? 1) : 0, out: String(stdout), err: String(stderr) };
      outputs.push(r.out, r.err);
      resolve(r);
    });
  });
}

/** A copy of the good tree to break one thing in. */
function copy(name: string): string {
  const to = join(dir, name);
  cpSync(good, to, { recursive: true });
  return to;
}

const ingress = (name: string, host: string) =>
  `apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: ${name}\nspec:\n  ingressClassName: cilium\n  rules:\n    - host: ${host}\n      http:\n        paths:\n          - path: /\n            pathType: Prefix\n            backend:\n              service:\n                name: ${name}\n                port:\n                  number: 80\n`;

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'hb-check-repo-'));
  host = ageKeygen(join(dir, 'host', 'keys.txt'));
  other = ageKeygen(join(dir, 'other', 'keys.txt'));
  const s = JSON.parse(readFileSync(join(repoRoot, 'examples', 'homelab.json'), 'utf8')) as Record<string, any>;
  s.sops = { ageKeyFile: host.file };
  s.gitops.path = 'gitops';
  s.hosts = [
    { name: 'transmission', access: 'local' },
    { name: 'echo-server', access: 'external' },
    { name: 'plex', access: 'local', ip: '192.168.0.241' },
    { name: 'argocd', access: 'local' },
  ];
  config = join(dir, 'homelab.json');
  writeFileSync(config, JSON.stringify(s));

  good = join(dir, 'good');
  write(good, '.sops.yaml', sopsConfig(RULE, [host.recipient]));
  write(good, 'gitops/media/transmission/kustomization.yaml', 'resources:\n  - ingress.yaml\ngenerators:\n  - ksops-generator.yaml\n');
  write(good, 'gitops/media/transmission/ingress.yaml', ingress('transmission', 'transmission.peterstorm.io'));
  write(good, 'gitops/media/transmission/ksops-generator.yaml', ksopsGenerator('transmission-secrets', ['./secrets.enc.yaml']));
  encryptInto(good, 'gitops/media/transmission/secrets.enc.yaml', secretYaml('transmission-vpn', { OPENVPN_USERNAME: 'peter', OPENVPN_PASSWORD: SECRET_VALUE }));
  write(good, 'gitops/apps/echo-server/ingress.yaml', ingress('echo-server', 'echo-server.peterstorm.io'));
  write(
    good,
    'gitops/media/plex/service.yaml',
    'apiVersion: v1\nkind: Service\nmetadata:\n  name: plex\n  annotations:\n    lbipam.cilium.io/ips: "192.168.0.241"\nspec:\n  type: LoadBalancer\n  ports:\n    - port: 32400\n',
  );
});

describe('check-repo', () => {
  it('a good tree: exit 0 and what was checked', async () => {
    const r = await checkRepo(good);
    assert.equal(r.code, 0, `${r.out}\n${r.err}`);
    assert.equal(r.out, `${good}: 1 encrypted file(s) decrypt with the host key, 1 ksops generator(s) complete, 4 host(s) agree with the tree\n`);
  });

  it("a file encrypted to another key: exit 1 naming it, even when that key is in the user's own sops keys file", async () => {
    const repo = copy('other-key');
    encryptInto(repo, 'gitops/apps/echo-server/secrets.enc.yaml', secretYaml('echo', { token: SECRET_VALUE }), [other.recipient]);
    // sops would find this key in ~/.config/sops/age/keys.txt; check-repo must not let it.
    const home = join(dir, 'home');
    mkdirSync(join(home, '.config', 'sops', 'age'), { recursive: true });
    writeFileSync(join(home, '.config', 'sops', 'age', 'keys.txt'), readFileSync(other.file));
    const r = await checkRepo(repo, { HOME: home });
    assert.equal(r.code, 1, `${r.out}\n${r.err}`);
    assert.match(r.out, new RegExp(`^gitops/apps/echo-server/secrets\\.enc\\.yaml: does not decrypt with the host key ${host.file.replace(/[.]/g, '\\.')}: it is encrypted to ${other.recipient}, not to ${host.recipient}; run \`sops updatekeys gitops/apps/echo-server/secrets\\.enc\\.yaml\``, 'm'));
    assert.equal(r.out.split('\n').filter(Boolean).length, 2, r.out); // the problem and the count
  });

  it(".sops.yaml without the host's recipient: exit 1 naming .sops.yaml and the recipient to add", async () => {
    const repo = copy('no-host-rule');
    write(repo, '.sops.yaml', sopsConfig(RULE, [other.recipient]));
    const r = await checkRepo(repo);
    assert.equal(r.code, 1, `${r.out}\n${r.err}`);
    assert.match(r.out, new RegExp(`^\\.sops\\.yaml: creation rule 1 \\(path_regex gitops/.*\\) does not list the host key's recipient ${host.recipient}; add it`, 'm'));
  });

  it('a ksops generator naming a missing file: exit 1 naming the generator and the file', async () => {
    const repo = copy('missing-file');
    write(repo, 'gitops/media/transmission/ksops-generator.yaml', ksopsGenerator('transmission-secrets', ['./secrets.enc.yaml', './vpn.enc.yaml']));
    const r = await checkRepo(repo);
    assert.equal(r.code, 1, `${r.out}\n${r.err}`);
    assert.match(r.out, /^gitops\/media\/transmission\/ksops-generator\.yaml: ksops generator transmission-secrets names \.\/vpn\.enc\.yaml, which does not exist/m);
  });

  it('a tree still encrypted to the shipped example key: exit 1, the example key named', async () => {
    const repo = copy('example-key');
    write(repo, '.sops.yaml', sopsConfig(RULE, [host.recipient, EXAMPLE_AGE_RECIPIENT]));
    encryptInto(repo, 'gitops/media/transmission/secrets.enc.yaml', secretYaml('transmission-vpn', { OPENVPN_USERNAME: 'peter', OPENVPN_PASSWORD: SECRET_VALUE }));
    const r = await checkRepo(repo);
    assert.equal(r.code, 1, `${r.out}\n${r.err}`);
    assert.match(r.out, /^\.sops\.yaml: creation rule 1 .*still lists the shipped example key/m);
    assert.match(r.out, /^gitops\/media\/transmission\/secrets\.enc\.yaml: is encrypted to the shipped example key/m);
  });

  it("an Ingress host missing from the settings' hosts: exit 1 naming the Ingress", async () => {
    const repo = copy('stray-host');
    write(repo, 'gitops/apps/echo-server/wiki.yaml', ingress('wiki', 'wiki.peterstorm.io'));
    const r = await checkRepo(repo);
    assert.equal(r.code, 1);
    assert.match(r.out, /^gitops\/apps\/echo-server\/wiki\.yaml: Ingress wiki serves wiki\.peterstorm\.io, which has no entry in the hosts table/m);
  });

  it('the key file is named but never printed; no output holds a secret value or key material', () => {
    assert.ok(outputs.length >= 12);
    const all = outputs.join('\n');
    const material = [SECRET_VALUE, host.identity, other.identity, host.identity.slice('AGE-SECRET-KEY-1'.length, 40), Buffer.from(readFileSync(host.file)).toString('base64').slice(0, 40)];
    for (const m of material) assert.ok(!all.toLowerCase().includes(m.toLowerCase()), 'an output holds key material or a secret value');
  });
});

process.on('exit', () => {
  if (dir && !process.env.HB_RIG_KEEP) rmSync(dir, { recursive: true, force: true });
});

// docs/migration.md, run as written: the Key Vault exports into SOPS files (through pipes only),
// check-repo failing on the shipped example tree and passing once the secrets are the user's, the
// backups by the old config paths, the wipe, the renames to the new tree's config paths, and the
// retirement of the vault's secrets and the old directories. Its kubectl and doctor commands are
// run against the rig in doctor.test.ts. What cannot run here is stood in for
// (test/rig/doc-blocks.ts): az, sudo, and host paths.
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { binPath, repoRoot } from '../rig/binaries.ts';
import { makeShims, putVaultSecret, runBlock, runnableBlocks, type BlockRun, type Shims } from '../rig/doc-blocks.ts';
import { ageKeygen, encryptInto, type AgeKey } from '../rig/sops-tree.ts';

const DOC = join(repoRoot, 'docs', 'migration.md');
const blocks = runnableBlocks(DOC);
const VAULT = 'homelab-k8s';
const values = {
  'nordvpn-username': `nord-user-${Math.random().toString(36).slice(2)}`,
  'nordvpn-password': `nord-pass-${Math.random().toString(36).slice(2)}-x`,
  'cloudflare-api-token-secret': `cf-token-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`,
};

let dir: string;
let repo: string;
let shims: Shims;
let host: AgeKey;
let me: AgeKey;
let varData: string;
const runs: BlockRun[] = [];

async function run(name: string, opts: { substitutions?: [string, string][]; input?: string } = {}): Promise<BlockRun> {
  const script = blocks.get(name);
  assert.ok(script, `docs/migration.md has no runnable block ${name}`);
  const r = await runBlock(script, {
    cwd: repo,
    shims,
    ...(opts.input !== undefined ? { input: opts.input } : {}),
    substitutions: opts.substitutions ?? [
      ['/var/lib/sops-nix/keys.txt', host.file],
      ['/var/data', varData],
    ],
    // The user's own key, which can edit the host's sops-nix file (sops set decrypts it first).
    env: { SOPS_AGE_KEY_FILE: me.file },
  });
  runs.push(r);
  return r;
}

function sops(args: string[], keyFile: string): string {
  return execFileSync(binPath('sops'), args, { cwd: repo, encoding: 'utf8', env: { PATH: process.env.PATH, HOME: dir, SOPS_AGE_KEY_FILE: keyFile } });
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'hb-migration-doc-'));
  shims = makeShims(dir);
  for (const [name, value] of Object.entries(values)) putVaultSecret(shims, VAULT, name, value);
  host = ageKeygen(join(dir, 'host', 'keys.txt'));
  me = ageKeygen(join(dir, 'me', 'keys.txt'));
  repo = join(dir, 'dotfiles');
  // SPEC's layout: the tree under k8s/argocd-homelab, as shipped (encrypted to the example key).
  cpSync(join(repoRoot, 'manifests', 'argocd-homelab'), join(repo, 'k8s', 'argocd-homelab'), { recursive: true });
  // .sops.yaml as step 1 shows it, plus the rule of the host's own sops-nix secrets.
  writeFileSync(
    join(repo, '.sops.yaml'),
    `keys:\n  - &homelab ${host.recipient}\n  - &me ${me.recipient}\ncreation_rules:\n  - path_regex: k8s/argocd-homelab/.*\\.enc\\.(yaml|json)$\n    encrypted_regex: ^(data|stringData)$\n    key_groups:\n      - age: [*homelab, *me]\n  - path_regex: secrets/hosts/homelab/[^/]+\\.yaml$\n    key_groups:\n      - age: [*homelab, *me]\n`,
  );
  encryptInto(repo, 'secrets/hosts/homelab/cloudflare.yaml', 'zone_id: "0123"\n');
  const s = JSON.parse(readFileSync(join(repoRoot, 'examples', 'homelab.json'), 'utf8')) as Record<string, any>;
  s.sops = { ageKeyFile: host.file };
  s.gitops.path = 'k8s/argocd-homelab';
  writeFileSync(join(repo, 'homelab.json'), JSON.stringify(s, null, 2));
  varData = join(dir, 'var-data');
  // The old App of Apps' layout: kube-plex and Transmission under their subPaths of media-ssd.
  mkdirSync(join(varData, 'configs', 'plex-data', 'Library'), { recursive: true });
  writeFileSync(join(varData, 'configs', 'plex-data', 'Library', 'Preferences.xml'), '<Preferences/>\n');
  mkdirSync(join(varData, 'configs', 'transmission-data', 'transmission-home'), { recursive: true });
  writeFileSync(join(varData, 'configs', 'transmission-data', 'transmission-home', 'settings.json'), '{}\n');
  mkdirSync(join(varData, 'configs', 'sonarr'));
});

describe('docs/migration.md, as written', () => {
  it('has the runnable blocks this test runs', () => {
    assert.deepEqual([...blocks.keys()].sort(), [
      'backup',
      'backup-configs',
      'check-repo',
      'doctor-after',
      'doctor-before',
      'export-api-token',
      'export-nordvpn',
      'grafana-admin',
      'grafana-password',
      'host-recipient',
      'new-api-token',
      'old-claims',
      'old-configs',
      'old-dirs',
      'plex-claim',
      'rename-configs',
      'vault-delete',
      'vault-list',
      'wipe',
    ]);
  });

  it("lists the vault's secret names (and no value)", async () => {
    const r = await run('vault-list');
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split('\n').sort(), Object.keys(values).sort());
  });

  it("prints the host key's recipient (public), not the key", async () => {
    const r = await run('host-recipient');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), host.recipient);
  });

  it('check-repo refuses the shipped tree: its secrets are the example key\'s', async () => {
    const r = await run('check-repo');
    assert.equal(r.code, 1, r.stdout + r.stderr);
    for (const f of ['media/transmission', 'infra/grafana-admin', 'media/plex']) {
      assert.match(r.stdout, new RegExp(`^k8s/argocd-homelab/${f}/secrets\\.enc\\.yaml: is encrypted to the shipped example key`, 'm'));
    }
  });

  it('the NordVPN export: a Secret encrypted to the host and the user, with the vault values', async () => {
    const r = await run('export-nordvpn');
    assert.equal(r.code, 0, r.stderr);
    const file = 'k8s/argocd-homelab/media/transmission/secrets.enc.yaml';
    const plain = sops(['decrypt', file], host.file);
    assert.match(plain, /^kind: Secret$/m);
    assert.match(plain, /^ {4}name: transmission-vpn$/m);
    const data = (k: string) => Buffer.from(new RegExp(`^ {4}${k}: (\\S+)$`, 'm').exec(plain)![1]!, 'base64').toString('utf8');
    assert.equal(data('OPENVPN_USERNAME'), values['nordvpn-username'], 'the value must be exactly the vault value (no trailing newline)');
    assert.equal(data('OPENVPN_PASSWORD'), values['nordvpn-password']);
    assert.ok(sops(['decrypt', file], me.file).includes('transmission-vpn'), "the user's own key decrypts it too");
    assert.ok(!existsSync(join(repo, 'secrets.enc.yaml.new')));
  });

  it('the Grafana admin login: generated and encrypted', async () => {
    const r = await run('grafana-admin');
    assert.equal(r.code, 0, r.stderr);
    const plain = sops(['decrypt', 'k8s/argocd-homelab/infra/grafana-admin/secrets.enc.yaml'], host.file);
    assert.match(plain, /^ {4}namespace: monitoring$/m);
    assert.match(plain, /^ {4}admin-password: \S{20,}$/m);
    const back = await run('grafana-password');
    assert.equal(back.code, 0, back.stderr);
    assert.match(back.stdout, /^[A-Za-z0-9+/]{32}$/);
    runs.pop(); // this one prints a password by design: the user asked for it
  });

  it('the Plex claim: an empty Secret for a server whose config is kept (already claimed)', async () => {
    const r = await run('plex-claim');
    assert.equal(r.code, 0, r.stderr);
    const plain = sops(['decrypt', 'k8s/argocd-homelab/media/plex/secrets.enc.yaml'], host.file);
    assert.match(plain, /^ {4}name: plex-claim$/m);
    assert.doesNotMatch(plain, /PLEX_CLAIM/, 'no example claim left');
  });

  it('the Cloudflare API token: into the host\'s sops-nix file, its other keys kept', async () => {
    const r = await run('export-api-token');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(sops(['decrypt', '--extract', '["cloudflare-api-token"]', 'secrets/hosts/homelab/cloudflare.yaml'], host.file), values['cloudflare-api-token-secret']);
    assert.equal(sops(['decrypt', '--extract', '["zone_id"]', 'secrets/hosts/homelab/cloudflare.yaml'], host.file), '0123');
  });

  it('a new API token typed at the prompt: stored the same way, never echoed', async () => {
    const token = `new-cf-token-${Math.random().toString(36).slice(2)}`;
    const r = await run('new-api-token', { input: `${token}\n` });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(!(r.stdout + r.stderr).includes(token));
    assert.equal(sops(['decrypt', '--extract', '["cloudflare-api-token"]', 'secrets/hosts/homelab/cloudflare.yaml'], host.file), token);
  });

  it('check-repo passes on the tree with the user\'s secrets', async () => {
    const r = await run('check-repo');
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /: 3 encrypted file\(s\) decrypt with the host key, 3 ksops generator\(s\) complete, 10 host\(s\) agree with the tree$/m);
  });

  it('shows the config directories as the old setup named them', async () => {
    const r = await run('old-configs');
    assert.equal(r.code, 0, r.stderr);
    for (const d of ['plex-data', 'transmission-data', 'sonarr']) assert.match(r.stdout, new RegExp(` ${d}$`, 'm'));
  });

  it('the Plex backup, by its old path', async () => {
    const r = await run('backup');
    assert.equal(r.code, 0, r.stderr);
    const tarball = readdirSync(repo).find((f) => /^plex-backup-\d{4}-\d{2}-\d{2}\.tar\.gz$/.test(f));
    assert.ok(tarball, readdirSync(repo).join(', '));
    assert.match(execFileSync('tar', ['-tzf', join(repo, tarball)], { encoding: 'utf8' }), /^plex-data\/Library\/Preferences\.xml$/m);
    const all = await run('backup-configs');
    assert.equal(all.code, 0, all.stderr);
    const configs = readdirSync(repo).find((f) => /^configs-backup-\d{4}-\d{2}-\d{2}\.tar\.gz$/.test(f));
    assert.ok(configs);
    assert.match(execFileSync('tar', ['-tzf', join(repo, configs)], { encoding: 'utf8' }), /^configs\/plex-data\/Library\/Preferences\.xml$/m);
  });

  it("the wipe deletes k3s' state and nothing of /var/data or /var/lib/sops-nix (on a stand-in root)", async () => {
    const root = join(dir, 'root');
    const k3sState = ['var/lib/rancher/k3s/server/db', 'var/lib/rancher/k3s/agent/etc/cni/net.d', 'var/lib/rancher/k3s/storage/pvc-1', 'etc/rancher/k3s', 'var/lib/kubelet/pods', 'var/lib/cni/networks/cbr0', 'etc/cni/net.d', 'run/k3s', 'run/flannel'];
    const kept = ['var/data/configs/plex', 'var/data/media/tv', 'var/lib/sops-nix', 'var/lib/rancher/other-tool', 'etc/rancher/other'];
    for (const d of [...k3sState, ...kept]) {
      mkdirSync(join(root, d), { recursive: true });
      writeFileSync(join(root, d, 'file'), 'x');
    }
    // Every absolute path in the command moves under the stand-in root.
    const r = await run('wipe', { substitutions: [[' /', ` ${root}/`]] });
    assert.equal(r.code, 0, r.stderr);
    for (const d of k3sState) assert.ok(!existsSync(join(root, d)), `${d} survived the wipe`);
    for (const d of kept) assert.ok(existsSync(join(root, d, 'file')), `${d} was deleted`);
  });

  it('the renames: the old configs land where the new tree mounts them; an existing config is never overwritten', async () => {
    const r = await run('rename-configs');
    assert.equal(r.code, 0, r.stderr);
    const configs = join(varData, 'configs');
    assert.deepEqual(readdirSync(configs).sort(), ['plex', 'sonarr', 'transmission']);
    assert.ok(existsSync(join(configs, 'plex', 'Library', 'Preferences.xml')));
    assert.ok(existsSync(join(configs, 'transmission', 'transmission-home', 'settings.json')));
    const again = await run('rename-configs');
    assert.equal(again.code, 0, `run twice: ${again.stderr}`);
    // A config under both names: mv -T stops instead of moving one into the other.
    mkdirSync(join(configs, 'plex-data'));
    writeFileSync(join(configs, 'plex-data', 'Preferences.xml'), '<Preferences/>\n');
    const both = await run('rename-configs');
    assert.notEqual(both.code, 0);
    assert.ok(existsSync(join(configs, 'plex-data', 'Preferences.xml')) && existsSync(join(configs, 'plex', 'Library', 'Preferences.xml')));
  });

  it("retiring the vault: every secret deleted, nothing printed", async () => {
    const r = await run('vault-delete');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '');
    assert.deepEqual(readdirSync(join(shims.vaultDir, VAULT)), []);
  });

  it('the old directories: removed from git, the new tree kept, a directory the repository lacks is no error', async () => {
    const git = join(dir, 'git-repo');
    for (const f of ['k8s/argocd/app-of-apps.yaml', 'k8s/argocd/apps/kube-plex.yaml', 'k8s/terraform/main.tf', 'k8s/argocd-homelab/appsets.yaml']) {
      mkdirSync(dirname(join(git, f)), { recursive: true });
      writeFileSync(join(git, f), 'x\n');
    }
    const g = (...args: string[]) => execFileSync('git', ['-c', 'user.name=t', '-c', 'user.email=t@example.com', '-c', 'init.defaultBranch=main', ...args], { cwd: git, encoding: 'utf8', env: { PATH: process.env.PATH, HOME: dir } });
    g('init', '--quiet');
    g('add', '.');
    g('commit', '--quiet', '-m', 'old');
    const r = await runBlock(blocks.get('old-dirs')!, { cwd: git, shims });
    assert.equal(r.code, 0, r.stderr); // k8s/terraform-homelab does not exist here
    assert.equal(g('ls-files'), 'k8s/argocd-homelab/appsets.yaml\n');
    assert.ok(!existsSync(join(git, 'k8s', 'argocd')) && !existsSync(join(git, 'k8s', 'terraform')));
    assert.match(g('status', '--porcelain'), /^D  k8s\/argocd\/app-of-apps\.yaml$/m);
  });

  it('no secret reached an output or a plaintext file', () => {
    const outputs = runs.map((r) => r.stdout + r.stderr).join('\n');
    const material = [...Object.values(values), host.identity, me.identity];
    for (const m of material) assert.ok(!outputs.includes(m), 'a command printed a secret or key material');
    const files: string[] = [];
    const walk = (d: string) => {
      for (const e of readdirSync(d)) {
        const p = join(d, e);
        if (statSync(p).isDirectory()) walk(p);
        else files.push(p);
      }
    };
    walk(repo);
    for (const f of files) {
      const text = readFileSync(f, 'latin1');
      for (const m of Object.values(values)) assert.ok(!text.includes(m) && !text.includes(Buffer.from(m).toString('base64')), `${f} holds a secret in plain text`);
    }
  });
});

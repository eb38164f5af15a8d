// The repo-credential step through the real CLI (`apply --only repo-credential`) against a REAL
// kube-apiserver (the rig): the Argo CD repository Secret from an HTTPS token or an SSH key,
// written only when it differs, and the credential nowhere but in that Secret's data: not in the
// CLI's output, the state file, Events or the apiserver's audit log.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateIdentity, identityToRecipient } from 'age-encryption';
import { repoRoot } from '../rig/binaries.ts';
import { startControlPlane, type ControlPlane } from '../rig/control-plane.ts';
import { auditMark, countRequests } from '../rig/audit.ts';
import { kubeJson } from '../rig/kube-http.ts';

const cli = join(repoRoot, 'src', 'cli.ts');
const SECRET_PATH = '/api/v1/namespaces/argocd/secrets/repo-gitops';

let cp: ControlPlane;
let dir: string;
const credentialFile = () => join(dir, 'git-credential');
/** Every credential the suite used, for the leak checks. */
const credentials: string[] = [];
const outputs: string[] = [];

function writeSettings(repoURL: string, extra: Record<string, unknown> = {}): string {
  const file = join(dir, 'settings.json');
  writeFileSync(
    file,
    JSON.stringify({
      domain: 'example.org',
      kubeconfigFile: cp.kubeconfigPath,
      network: { lbPool: { start: '192.168.0.240', stop: '192.168.0.250' }, ingressIP: '192.168.0.240', interfaces: ['^eth0$'] },
      sops: { ageKeyFile: join(dir, 'keys.txt') },
      gitops: { repoURL, repoCredentialFile: credentialFile(), ...extra },
    }),
  );
  return file;
}

function apply(config: string, command: 'apply' | 'plan' = 'apply'): { code: number; output: string } {
  // No CREDENTIALS_DIRECTORY: the settings' paths are read, as outside systemd.
  const env = { ...process.env, CREDENTIALS_DIRECTORY: '' };
  const r = spawnSync(process.execPath, [cli, command, '--config', config, '--state-dir', join(dir, 'state'), '--only', 'repo-credential'], { env, encoding: 'utf8', timeout: 120_000 });
  const output = `${r.stdout}${r.stderr}`;
  outputs.push(output);
  return { code: r.status ?? -1, output };
}

const decoded = async (): Promise<Record<string, string>> => {
  const s = (await kubeJson<any>(cp.rig, 'GET', SECRET_PATH)).json;
  assert.equal(s.metadata.labels['argocd.argoproj.io/secret-type'], 'repository');
  return Object.fromEntries(Object.entries(s.data as Record<string, string>).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]));
};

/** Fails if 12 characters in a row of any credential (or of its base64) are in `text`. */
function assertNoCredential(text: string, what: string): void {
  for (const c of credentials) {
    for (const s of [c.replace(/-----[A-Z ]+-----|\s/g, ''), Buffer.from(c).toString('base64')]) {
      for (let i = 0; i + 12 <= s.length; i += 6) assert.ok(!text.includes(s.slice(i, i + 12)), `${what} contains credential bytes`);
    }
  }
}

describe('repo-credential: Argo CD repository Secret from a credential file', () => {
  before(async () => {
    cp = await startControlPlane();
    dir = mkdtempSync(join(tmpdir(), 'hb-repo-cred-'));
    // preflight wants a real age identity; this suite is not about it.
    const identity = await generateIdentity();
    writeFileSync(join(dir, 'keys.txt'), `# public key: ${await identityToRecipient(identity)}\n${identity}\n`, { mode: 0o600 });
  });
  after(async () => {
    await cp?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('an HTTPS token: creates argocd/repo-gitops with url, type, username, password; a second run writes nothing', async () => {
    const token = `ghp_${randomBytes(18).toString('hex')}`;
    credentials.push(token);
    writeFileSync(credentialFile(), `${token}\n`, { mode: 0o600 });
    const config = writeSettings('https://github.com/example/private-homelab.git', { repoUsername: 'peterstorm' });

    const first = apply(config);
    assert.equal(first.code, 0, first.output);
    assert.deepEqual(await decoded(), { type: 'git', url: 'https://github.com/example/private-homelab.git', username: 'peterstorm', password: token });

    const mark = await auditMark(cp);
    const second = apply(config);
    assert.equal(second.code, 0, second.output);
    const counts = await countRequests(cp, { since: mark });
    assert.equal(counts.writes, 0, `the no-op run wrote: ${JSON.stringify(counts.byResource)}`);
  });

  it('a rotated token or a changed repoURL updates the Secret in place', async () => {
    const token = `glpat-${randomBytes(16).toString('hex')}`;
    credentials.push(token);
    writeFileSync(credentialFile(), token, { mode: 0o600 });
    const r = apply(writeSettings('https://gitlab.example.org/me/homelab.git'));
    assert.equal(r.code, 0, r.output);
    assert.deepEqual(await decoded(), { type: 'git', url: 'https://gitlab.example.org/me/homelab.git', username: 'git', password: token });
  });

  it('edited by another client (kubectl patch): plan names that manager, apply takes the field back', async () => {
    const config = writeSettings('https://gitlab.example.org/me/homelab.git');
    const before = await decoded();
    const r = await kubeJson(cp.rig, 'PATCH', `${SECRET_PATH}?fieldManager=kubectl-patch`, {
      body: { data: { url: Buffer.from('https://gitlab.example.org/someone-else/homelab.git').toString('base64') } },
      contentType: 'application/merge-patch+json',
    });
    assert.equal(r.status, 200);
    const p = apply(config, 'plan');
    assert.equal(p.code, 2, p.output);
    assert.match(p.output, /update Secret argocd\/repo-gitops: .*overwrites the change of kubectl-patch \(Update\) to \$\.data\.url/, p.output);
    const a = apply(config);
    assert.equal(a.code, 0, a.output);
    assert.deepEqual(await decoded(), before);
  });

  it('an SSH private key for an SSH URL becomes sshPrivateKey; the HTTPS fields go', async () => {
    const key = `-----BEGIN OPENSSH PRIVATE KEY-----\n${randomBytes(150).toString('base64').match(/.{1,70}/g)!.join('\n')}\n-----END OPENSSH PRIVATE KEY-----\n`;
    credentials.push(key);
    writeFileSync(credentialFile(), key, { mode: 0o600 });
    const r = apply(writeSettings('git@github.com:example/private-homelab.git'));
    assert.equal(r.code, 0, r.output);
    assert.deepEqual(await decoded(), { type: 'git', url: 'git@github.com:example/private-homelab.git', sshPrivateKey: key });
  });

  it('a key for an HTTPS URL fails the step, naming the field, and leaves the Secret as it was', async () => {
    const before = await decoded();
    const r = apply(writeSettings('https://github.com/example/private-homelab.git'));
    assert.equal(r.code, 1, r.output);
    assert.match(r.output, /holds an SSH private key, but \$\.gitops\.repoURL is an HTTPS URL/);
    assert.match(r.output, /\$\.gitops\.repoCredentialFile/);
    assert.deepEqual(await decoded(), before);
  });

  it('the credential is nowhere but in the Secret: not in output, state, Events or the audit log', async () => {
    assert.ok(credentials.length >= 3 && outputs.length >= 5);
    for (const [i, o] of outputs.entries()) assertNoCredential(o, `CLI run ${i + 1} output`);
    for (const f of readdirSync(join(dir, 'state'))) assertNoCredential(readFileSync(join(dir, 'state', f), 'utf8'), `state file ${f}`);
    const events = (await kubeJson<any>(cp.rig, 'GET', '/api/v1/events')).json;
    assertNoCredential(JSON.stringify(events), 'Events');
    assertNoCredential(readFileSync(cp.auditLogPath, 'utf8'), 'the audit log');
  });
});

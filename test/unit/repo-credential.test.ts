// The pure half of the repo-credential step: which credential a repoURL needs, the Argo CD
// repository Secret, and errors that name the field but never the credential.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseSettings } from '../../src/settings/load.ts';
import type { SettingsInput } from '../../src/settings/schema.ts';
import {
  credentialValue,
  desiredRepoCredential,
  renderedRepoSecret,
  repoAuthOf,
  repoSecretObject,
  REPO_SECRET_TYPE_LABEL,
} from '../../src/desired/repo-credential.ts';
import { repoCredentialStep } from '../../src/steps/repo-credential.ts';
import { STEPS } from '../../src/steps/index.ts';
import { render } from '../../src/render.ts';

const settings = (gitops: Partial<SettingsInput['gitops']> = {}) =>
  parseSettings({
    domain: 'example.org',
    network: { lbPool: { start: '192.168.0.240', stop: '192.168.0.250' }, ingressIP: '192.168.0.240' },
    gitops: { repoURL: 'https://github.com/example/homelab.git', repoCredentialFile: '/run/credentials/git', ...gitops },
  });
const TOKEN = 'ghp_0123456789abcdefghijABCDEFGHIJ012345';
const KEY = '-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----';
const decode = (o: any) => Object.fromEntries(Object.entries(o.data as Record<string, string>).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]));

test('the URL decides the credential: https:// a token, git@host: or ssh:// a private key', () => {
  assert.equal(repoAuthOf('https://github.com/a/b.git'), 'https');
  assert.equal(repoAuthOf('http://git.lan/a/b'), 'https');
  assert.equal(repoAuthOf('git@github.com:a/b.git'), 'ssh');
  assert.equal(repoAuthOf('ssh://git@git.lan:2222/a/b.git'), 'ssh');
  assert.equal(repoAuthOf('/srv/git/b.git'), undefined);
  assert.throws(() => desiredRepoCredential(settings({ repoURL: 'file:///srv/git/b.git' })), /\$\.gitops\.repoURL file:\/\/\/srv\/git\/b\.git is neither/);
});

test('settings: repoCredentialFile is optional and absolute, repoUsername defaults to git', () => {
  assert.equal(settings().gitops.repoUsername, undefined);
  assert.equal(desiredRepoCredential(settings()).username, 'git');
  assert.equal(desiredRepoCredential(settings({ repoUsername: 'peterstorm' })).username, 'peterstorm');
  assert.throws(() => settings({ repoCredentialFile: 'relative/path' }), /repoCredentialFile/);
  assert.throws(() => settings({ repoUsername: '' }), /repoUsername/);
});

test('an HTTPS token becomes an Argo CD repository Secret with username and password', () => {
  const want = desiredRepoCredential(settings());
  const o = repoSecretObject(want, credentialValue(want, `${TOKEN}\n`));
  assert.equal(o.metadata.namespace, 'argocd');
  assert.equal(o.metadata.name, 'repo-gitops');
  assert.equal(o.metadata.labels?.[REPO_SECRET_TYPE_LABEL], 'repository');
  assert.deepEqual(decode(o), { type: 'git', url: 'https://github.com/example/homelab.git', username: 'git', password: TOKEN });
});

test('an SSH private key becomes sshPrivateKey (ending in a newline, as ssh needs)', () => {
  const want = desiredRepoCredential(settings({ repoURL: 'git@github.com:example/homelab.git' }));
  assert.equal(want.username, undefined);
  const o = repoSecretObject(want, credentialValue(want, KEY));
  assert.deepEqual(decode(o), { type: 'git', url: 'git@github.com:example/homelab.git', sshPrivateKey: `${KEY}\n` });
});

test('a credential that does not fit the URL is refused, naming the fields and never the value', () => {
  const https = desiredRepoCredential(settings());
  const ssh = desiredRepoCredential(settings({ repoURL: 'ssh://git@git.lan/a/b.git' }));
  for (const [want, text, re] of [
    [https, KEY, /holds an SSH private key, but \$\.gitops\.repoURL is an HTTPS URL/],
    [ssh, TOKEN, /is not an SSH private key .* but \$\.gitops\.repoURL is an SSH URL/],
    [https, `${TOKEN} second-line\nmore`, /one token on one line/],
  ] as const) {
    assert.throws(
      () => credentialValue(want, text),
      (e: Error) => {
        assert.match(e.message, re);
        assert.match(e.message, /\/run\/credentials\/git \(\$\.gitops\.repoCredentialFile\)/);
        assert.ok(!e.message.includes(TOKEN.slice(4, 20)) && !e.message.includes('b3BlbnNzaC1r'), 'the error contains the credential');
        return true;
      },
    );
  }
});

test('render shows a reference to the credential, never a value, and only when the field is set', () => {
  const r = renderedRepoSecret(desiredRepoCredential(settings()));
  assert.equal((r as any).data, undefined);
  assert.equal((r as any).stringData.password, '<credential git-repo-credential: /run/credentials/git>');
  const objects = render(settings()).objects.filter((o) => o.metadata.name === 'repo-gitops');
  assert.equal(objects.length, 1);
  const without = parseSettings({ ...settings(), gitops: { repoURL: 'https://github.com/example/homelab.git' } });
  assert.equal(render(without).objects.some((o) => o.metadata.name === 'repo-gitops'), false);
});

test('the step: disabled without the field, needs the argocd namespace, and root-appset waits for it', () => {
  assert.equal(repoCredentialStep.enabled?.(settings()), true);
  assert.equal(repoCredentialStep.enabled?.(parseSettings({ ...settings(), gitops: { repoURL: 'https://x.example/a.git' } })), false);
  assert.deepEqual(repoCredentialStep.needs, ['age-key']);
  const root = STEPS.find((s) => s.name === 'root-appset');
  assert.ok(root?.needs.includes('repo-credential'), 'the ApplicationSet would list a private repo before Argo CD may read it');
});

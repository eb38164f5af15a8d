// The Argo CD facts of DESIGN.md and the ksops README's values for the argo-cd chart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseSettings } from '../../src/settings/load.ts';
import type { SettingsInput } from '../../src/settings/schema.ts';
import { argocdValues } from '../../src/desired/argocd-values.ts';
import { pinnedImage } from '../rig/pins.ts';

const base: SettingsInput = {
  domain: 'example.org',
  network: { lbPool: { start: '192.168.0.240', stop: '192.168.0.250' }, ingressIP: '192.168.0.240' },
  gitops: { repoURL: 'https://github.com/example/homelab.git' },
};
const values = (over: Partial<SettingsInput> = {}) => argocdValues(parseSettings({ ...base, ...over })) as Record<string, any>;
const repo = () => values().repoServer;
const byName = (list: any[], name: string): any => {
  const x = list.find((i) => i.name === name);
  assert.ok(x, `no entry named ${name}`);
  return x;
};

test('the server speaks plain HTTP behind the ingress: configs.params."server.insecure" is true', () => {
  assert.equal(values().configs.params['server.insecure'], true);
});

test('kustomize build options enable plugins, exec (ksops) and helm (helmCharts)', () => {
  const opts: string = values().configs.cm['kustomize.buildOptions'];
  assert.deepEqual(opts.split(' ').sort(), ['--enable-alpha-plugins', '--enable-exec', '--enable-helm']);
});

test('ksops (pinned in pins.yaml) installs only itself into the custom-tools emptyDir from an initContainer', () => {
  const r = repo();
  assert.deepEqual(byName(r.volumes, 'custom-tools'), { name: 'custom-tools', emptyDir: {} });
  const init = byName(r.initContainers, 'install-ksops');
  assert.equal(init.image, pinnedImage('viaductoss/ksops'));
  // Distroless image: the old `/bin/sh -c mv ...` recipe has no shell to run in. No
  // --with-kustomize: ksops' bundled kustomize runs `helm version -c`, which Helm 4 rejects.
  assert.deepEqual(init.command, ['/usr/local/bin/ksops', 'install', '/custom-tools']);
  assert.ok(!init.command.includes('--with-kustomize'));
  assert.equal('args' in init, false);
  assert.deepEqual(init.volumeMounts, [{ mountPath: '/custom-tools', name: 'custom-tools' }]);
});

test('the repo-server keeps Argo CD\'s own kustomize and finds ksops on PATH', () => {
  const mounts: any[] = repo().volumeMounts;
  assert.deepEqual(mounts.find((m) => m.mountPath === '/usr/local/bin/ksops'), { mountPath: '/usr/local/bin/ksops', name: 'custom-tools', subPath: 'ksops' });
  // Nothing shadows the image's kustomize: no file mount on it, no mount over /usr/local/bin.
  for (const m of mounts) {
    assert.notEqual(m.mountPath, '/usr/local/bin/kustomize', 'a mount replaces Argo CD\'s kustomize');
    assert.notEqual(m.mountPath.replace(/\/$/, ''), '/usr/local/bin', 'a mount hides /usr/local/bin');
  }
  assert.equal((repo().env as any[]).some((e) => e.name === 'PATH'), false, 'PATH is the image\'s own');
});

test('the age Secret sops-age-key (key keys.txt) is mounted and SOPS_AGE_KEY_FILE points at it', () => {
  const r = repo();
  const vol = byName(r.volumes, 'sops-age');
  assert.equal(vol.secret.secretName, 'sops-age-key');
  assert.deepEqual(vol.secret.items, [{ key: 'keys.txt', path: 'keys.txt' }]);
  const mount = (r.volumeMounts as any[]).find((m) => m.name === 'sops-age');
  assert.ok(mount, 'sops-age mounted');
  assert.equal(mount.readOnly, true);
  const keyFile = byName(r.env, 'SOPS_AGE_KEY_FILE').value;
  assert.equal(keyFile, `${mount.mountPath}/keys.txt`);
  // sops' default lookup ($XDG_CONFIG_HOME/sops/age/keys.txt) lands on the same file.
  assert.equal(`${byName(r.env, 'XDG_CONFIG_HOME').value}/sops/age/keys.txt`, keyFile);
});

test('every mount names a volume that exists', () => {
  const r = repo();
  const names = new Set((r.volumes as any[]).map((v) => v.name));
  for (const m of [...r.volumeMounts, ...r.initContainers.flatMap((c: any) => c.volumeMounts)]) assert.ok(names.has(m.name), m.name);
});

test('Ingress argocd.<domain> with class cilium', () => {
  const v = values();
  assert.equal(v.server.ingress.enabled, true);
  assert.equal(v.server.ingress.ingressClassName, 'cilium');
  // The chart's server.ingress.hostname defaults to global.domain.
  assert.equal(v.global.domain, 'argocd.example.org');
  assert.equal(v.server.ingress.hostname, undefined);
});

test('argocd.hostname may be a label or a full name inside the domain', () => {
  assert.equal(values({ argocd: { hostname: 'cd' } }).global.domain, 'cd.example.org');
  assert.equal(values({ argocd: { hostname: 'argo.lab.example.org' } }).global.domain, 'argo.lab.example.org');
});

test('user overrides deep-merge: arrays replace, null deletes', () => {
  const v = values({ argocd: { values: { configs: { params: { 'server.insecure': null, 'reposerver.parallelism.limit': 2 } }, dex: { enabled: false } } } });
  assert.equal('server.insecure' in v.configs.params, false);
  assert.equal(v.configs.params['reposerver.parallelism.limit'], 2);
  assert.equal(v.dex.enabled, false);
  assert.ok(v.configs.cm['kustomize.buildOptions'], 'siblings stay');
});

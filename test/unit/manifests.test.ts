// The GitOps tree under manifests/argocd-homelab, checked as files: no binaries, no cluster, and no
// decryption (the tree's secrets are the user's, encrypted to whatever key the user chose). The
// integration suite (manifests-dryrun.test.ts) builds the same directories with kustomize and
// ksops and dry-runs them against a real apiserver.
//
// HB_GITOPS_ROOT points these tests at another checkout's .sops.yaml and manifests/ (the SOPS
// suite runs them on a copy of the tree re-keyed to a new age key).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { loadSettings } from '../../src/settings/load.ts';
import { DEFAULTS } from '../../src/settings/schema.ts';
import { fqdn, ipToInt } from '../../src/settings/names.ts';
import { ciliumValues } from '../../src/desired/cilium-values.ts';
import { EXAMPLE_AGE_RECIPIENT, isExampleRecipient } from '../../src/gitops/example-key.ts';
import { pinnedChart } from '../rig/pins.ts';

// Kubernetes objects are open-ended JSON; the tests check shapes field by field.
type Obj = any;

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** Where .sops.yaml and manifests/ are read from: this checkout, or a copy under test. */
const gitopsRoot = process.env.HB_GITOPS_ROOT ? resolve(process.env.HB_GITOPS_ROOT) : repoRoot;
const tree = join(gitopsRoot, 'manifests', 'argocd-homelab');
const settingsFile = join(repoRoot, 'examples', 'homelab.json');
const settings = loadSettings(settingsFile);
const exampleKeyFile = join(repoRoot, 'test', 'fixtures', 'age', 'test-key.txt');

/** Files that configure Kustomize or SOPS rather than being resources of the app. */
const NOT_RESOURCES = new Set(['kustomization.yaml', 'ksops-generator.yaml', 'README.md']);

/** The keys each shipped Secret must have (values are the user's; names are checked, never decrypted). */
const SECRET_KEYS: Record<string, string[]> = {
  'monitoring/grafana-admin': ['admin-password', 'admin-user'],
  'plex/plex-claim': ['PLEX_CLAIM'],
  'transmission/transmission-vpn': ['OPENVPN_PASSWORD', 'OPENVPN_USERNAME'],
};

interface AppDir {
  group: string;
  name: string;
  dir: string;
  kustomization: Obj;
  /** Every object of the resource files, as written (before Kustomize sets namespaces and labels). */
  objects: Obj[];
}

function readDocs(file: string): Obj[] {
  const docs = parseAllDocuments(readFileSync(file, 'utf8'));
  for (const d of docs) if (d.errors.length > 0) throw new Error(`${file}: ${d.errors[0]?.message}`);
  return docs.map((d) => d.toJS()).filter((o) => o !== null && o !== undefined);
}

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

function appDirs(): AppDir[] {
  return settings.gitops.groups.flatMap((group) => {
    const gdir = join(tree, group);
    if (!existsSync(gdir)) return [];
    return readdirSync(gdir)
      .filter((n) => statSync(join(gdir, n)).isDirectory())
      .map((name) => {
        const dir = join(gdir, name);
        const kfile = join(dir, 'kustomization.yaml');
        const kustomization = existsSync(kfile) ? parseYaml(readFileSync(kfile, 'utf8')) : undefined;
        const resources: string[] = kustomization?.resources ?? [];
        const objects = resources.flatMap((r) => readDocs(join(dir, r)));
        return { group, name, dir, kustomization, objects };
      });
  });
}

const apps = appDirs();
const app = (name: string): AppDir => {
  const a = apps.find((x) => x.name === name);
  assert.ok(a, `app directory ${name} is missing`);
  return a;
};
const allObjects = (): Obj[] => apps.flatMap((a) => a.objects);
const ofKind = (a: AppDir, kind: string): Obj[] => a.objects.filter((o) => o.kind === kind);
const one = (a: AppDir, kind: string, name?: string): Obj => {
  const found = ofKind(a, kind).filter((o) => name === undefined || o.metadata?.name === name);
  assert.equal(found.length, 1, `${a.name}: expected one ${kind}${name ? ` ${name}` : ''}, found ${found.length}`);
  return found[0];
};
const podSpecs = (objs: Obj[]): { owner: Obj; spec: Obj }[] =>
  objs.filter((o) => ['Deployment', 'StatefulSet', 'DaemonSet'].includes(o.kind)).map((o) => ({ owner: o, spec: o.spec.template.spec }));
const containersOf = (spec: Obj): Obj[] => [...(spec.initContainers ?? []), ...(spec.containers ?? [])];
const envOf = (c: Obj): Record<string, string> =>
  Object.fromEntries((c.env ?? []).filter((e: Obj) => typeof e.value === 'string').map((e: Obj) => [e.name, e.value]));

// ---- policy helpers (the integration suite re-checks the built output with its own copy) ----

const FLOATING_TAGS = /^(latest|stable|main|master|develop|dev|edge|nightly|release|rolling|beta|alpha|canary)$/i;
/** A pinned image has a digest, or a tag that names a version (has a digit) and is no moving alias. */
function imagePinProblem(image: string): string | undefined {
  if (/@sha256:[0-9a-f]{64}$/.test(image)) return undefined;
  const lastSlash = image.lastIndexOf('/');
  const colon = image.indexOf(':', lastSlash + 1);
  if (colon < 0) return `${image}: no tag (means latest)`;
  const tag = image.slice(colon + 1);
  if (FLOATING_TAGS.test(tag) || /(^|[-.])latest([-.]|$)/i.test(tag)) return `${image}: floating tag ${tag}`;
  if (!/^v?\d+(\.\d+)*([-.+_][0-9A-Za-z.-]+)?$/.test(tag)) return `${image}: tag ${tag} is not a version`;
  return undefined;
}

function cidrContains(cidr: string, ip: string): boolean {
  const [net, bits] = cidr.split('/');
  const n = Number(bits);
  const mask = n === 0 ? 0 : (0xffffffff << (32 - n)) >>> 0;
  return ((ipToInt(net ?? '') & mask) >>> 0) === ((ipToInt(ip) & mask) >>> 0);
}

/** Which volume, mount and host path serve `path` inside container `c` (the longest mountPath wins, as in the kubelet). */
function resolvePath(spec: Obj, c: Obj, path: string): { mount: Obj; volume: Obj; hostPath?: string } | undefined {
  const mounts: Obj[] = (c.volumeMounts ?? []).filter((m: Obj) => path === m.mountPath || path.startsWith(`${m.mountPath.replace(/\/$/, '')}/`));
  mounts.sort((a, b) => b.mountPath.length - a.mountPath.length);
  const mount = mounts[0];
  if (!mount) return undefined;
  const volume = (spec.volumes ?? []).find((v: Obj) => v.name === mount.name);
  const rest = path.slice(mount.mountPath.length);
  const hostPath = volume?.hostPath ? `${volume.hostPath.path.replace(/\/$/, '')}${rest}` : undefined;
  return { mount, volume, hostPath };
}

/**
 * The host directory local-path-provisioner makes for a claim of one of the tree's StorageClasses:
 * `nodePath` joined with `pathPattern`, a Go template over the claim (provisioner.go's
 * pathFromPattern; the tree only uses .PVC.Namespace and .PVC.Name).
 */
function claimHostPath(pvc: Obj, namespace: string): string {
  const sc = ofKind(app('storage'), 'StorageClass').find((c) => c.metadata.name === pvc.spec.storageClassName);
  assert.ok(sc, `claim ${pvc.metadata.name}: StorageClass ${pvc.spec.storageClassName} is not in infra/storage`);
  assert.equal(sc.provisioner, 'rancher.io/local-path', `${sc.metadata.name}: k3s' bundled provisioner`);
  const { nodePath, pathPattern } = sc.parameters ?? {};
  assert.ok(nodePath && pathPattern, `${sc.metadata.name}: nodePath and pathPattern`);
  const values: Record<string, string> = { '.PVC.Namespace': namespace, '.PVC.Name': pvc.metadata.name };
  const dir = String(pathPattern).replace(/\{\{\s*([.\w]+)\s*\}\}/g, (_m, k: string) => {
    assert.ok(k in values, `${sc.metadata.name}: pathPattern uses {{ ${k} }}, which this check does not model`);
    return values[k]!;
  });
  return join(nodePath, dir);
}

function labelsMatch(selector: Record<string, string>, labels: Record<string, string> | undefined): boolean {
  return Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

// ---- the tree ----

describe('tree layout', () => {
  it('has appsets.yaml and the groups with the apps the issue names', () => {
    assert.ok(existsSync(join(tree, 'appsets.yaml')));
    const have = apps.map((a) => `${a.group}/${a.name}`).sort();
    for (const want of [
      'infra/cloudflared',
      'infra/monitoring',
      'infra/grafana-admin',
      'infra/storage',
      'apps/echo-server',
      'media/plex',
      'media/sonarr',
      'media/radarr',
      'media/prowlarr',
      'media/overseerr',
      'media/transmission',
    ]) {
      assert.ok(have.includes(want), `missing ${want}; have ${have.join(', ')}`);
    }
  });

  it('every app directory is a self-contained Kustomization whose files are all used', () => {
    for (const a of apps) {
      assert.ok(a.kustomization, `${a.group}/${a.name}: no kustomization.yaml`);
      assert.equal(a.kustomization.kind, 'Kustomization');
      const listed = new Set<string>([...(a.kustomization.resources ?? []), ...(a.kustomization.generators ?? [])]);
      for (const r of listed) {
        assert.ok(!r.includes('..') && !r.startsWith('/'), `${a.name}: ${r} reaches outside the app directory`);
        assert.ok(existsSync(join(a.dir, r)), `${a.name}: ${r} is listed but missing`);
      }
      const files = readdirSync(a.dir).filter((f) => !NOT_RESOURCES.has(f) && !f.endsWith('.enc.yaml'));
      for (const f of files) assert.ok(listed.has(f), `${a.name}: ${f} is not listed in kustomization.yaml (dead file?)`);
      assert.ok(a.objects.length > 0 || (a.kustomization.generators ?? []).length > 0, `${a.name}: no objects`);
    }
  });

  it('app names are unique across groups (each becomes an Application and a namespace of that name)', () => {
    const names = apps.map((a) => a.name);
    assert.deepEqual([...new Set(names)].sort(), names.slice().sort());
    for (const n of names) assert.match(n, /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
  });

  it('namespaces match the directory name the root ApplicationSet deploys to', () => {
    const elsewhere = new Set(['monitoring', 'grafana-admin', 'storage']); // checked below
    for (const a of apps) {
      if (elsewhere.has(a.name)) continue;
      assert.equal(a.kustomization.namespace, a.name, `${a.name}: kustomization namespace`);
      for (const o of a.objects) {
        assert.ok(o.metadata.namespace === undefined || o.metadata.namespace === a.name, `${a.name}: ${o.kind} ${o.metadata.name} in ${o.metadata.namespace}`);
      }
    }
    const mon = app('monitoring');
    assert.equal(mon.kustomization.namespace, undefined, 'a kustomize namespace would move the child Application out of argocd');
    for (const o of mon.objects) assert.equal(o.metadata.namespace, 'argocd', `monitoring: ${o.kind} ${o.metadata.name}`);
    // Grafana's Secret lands where Grafana reads it, from its own Application.
    assert.equal(app('grafana-admin').kustomization.namespace, 'monitoring');
    // StorageClasses are cluster-scoped: no namespace anywhere.
    const storage = app('storage');
    assert.equal(storage.kustomization.namespace, undefined);
    for (const o of storage.objects) assert.equal(o.metadata.namespace, undefined, `storage: ${o.kind} ${o.metadata.name}`);
  });

  it('uses no Bitnami or k8s-at-home images or charts', () => {
    const text = walk(tree).filter((f) => f.endsWith('.yaml')).map((f) => readFileSync(f, 'utf8')).join('\n');
    assert.doesNotMatch(text, /bitnami|k8s-at-home/i);
  });
});

describe('root ApplicationSet (appsets.yaml)', () => {
  const docs = readDocs(join(tree, 'appsets.yaml'));
  const appset = docs[0];

  it('is one ApplicationSet in argocd with goTemplate and missingkey=error', () => {
    assert.equal(docs.length, 1);
    assert.equal(appset.apiVersion, 'argoproj.io/v1alpha1');
    assert.equal(appset.kind, 'ApplicationSet');
    assert.equal(appset.metadata.namespace, 'argocd');
    assert.equal(appset.spec.goTemplate, true);
    assert.deepEqual(appset.spec.goTemplateOptions, ['missingkey=error']);
    assert.equal(appset.spec.syncPolicy.preserveResourcesOnDeletion, true);
  });

  it('discovers <path>/<group>/* for every group in the settings, from the settings repo and revision', () => {
    const { repoURL, revision, path, groups } = settings.gitops;
    assert.equal(path, relative(gitopsRoot, tree), 'settings.gitops.path must point at this tree');
    const gens = appset.spec.generators;
    assert.equal(gens.length, 1);
    assert.equal(gens[0].git.repoURL, repoURL);
    assert.equal(gens[0].git.revision, revision);
    assert.deepEqual(gens[0].git.directories.map((d: Obj) => d.path), groups.map((g) => `${path}/${g}/*`));
    const t = appset.spec.template;
    assert.equal(t.spec.source.repoURL, repoURL);
    assert.equal(t.spec.source.targetRevision, revision);
  });

  it('names each Application and its namespace after the directory, syncing automatically with SSA', () => {
    const t = appset.spec.template;
    assert.equal(t.metadata.name, '{{.path.basename}}');
    assert.equal(t.spec.source.path, '{{.path.path}}');
    assert.equal(t.spec.destination.namespace, '{{.path.basename}}');
    assert.equal(t.spec.destination.server, 'https://kubernetes.default.svc');
    assert.deepEqual(t.spec.syncPolicy.automated, { prune: true, selfHeal: true });
    assert.ok(t.spec.syncPolicy.syncOptions.includes('CreateNamespace=true'));
    assert.ok(t.spec.syncPolicy.syncOptions.includes('ServerSideApply=true'));
  });

  it('is exactly what the daemon applies for examples/homelab.json', async () => {
    // Imported lazily so a broken daemon module fails this test only.
    const { desiredAppSet } = await import('../../src/desired/appset.ts');
    assert.deepEqual(appset, desiredAppSet(settings));
  });
});

// ---- hostnames: one source, the settings ----

describe('hostnames agree with the DNS records the daemon renders from settings', () => {
  const ingressHosts = (): { host: string; where: string; serviceName: string; namespace: string }[] => {
    const out: { host: string; where: string; serviceName: string; namespace: string }[] = [];
    for (const a of apps) {
      for (const ing of ofKind(a, 'Ingress')) {
        for (const r of ing.spec.rules) {
          for (const p of r.http.paths) out.push({ host: r.host, where: `${a.name}/Ingress ${ing.metadata.name}`, serviceName: p.backend.service.name, namespace: a.name });
        }
      }
    }
    const grafana = monitoringValues().grafana.ingress;
    for (const h of grafana.hosts) out.push({ host: h, where: 'monitoring/grafana values', serviceName: 'kube-prometheus-stack-grafana', namespace: 'monitoring' });
    // The daemon's Cilium values render Hubble UI's Ingress (the chart's hubble.ui.ingress).
    const ui = (ciliumValues(settings) as Obj).hubble.ui.ingress;
    for (const h of ui?.enabled ? ui.hosts : []) out.push({ host: h, where: 'cilium values hubble.ui.ingress', serviceName: 'hubble-ui', namespace: 'kube-system' });
    return out;
  };

  // Imported lazily so a missing or broken render fails these tests, not the whole file.
  const rendered = async () => {
    const { render } = await import('../../src/render.ts');
    const r = render(settings);
    assert.ok(r.dns, 'render(settings).dns is empty; the example settings have a cloudflare block');
    return r;
  };

  it('every Ingress host (and Grafana) has a DNS record that leads to the shared Cilium ingress', async () => {
    const r = await rendered();
    const records = new Map(r.dns!.flatMap((z) => z.records).map((rec) => [rec.name, rec]));
    const hosts = ingressHosts();
    assert.ok(hosts.length >= 7, `only ${hosts.length} ingress hosts found`);
    for (const h of hosts) {
      assert.equal(h.host, h.host.toLowerCase(), `${h.where}: host must be lowercase like the DNS names`);
      const rec = records.get(h.host);
      assert.ok(rec, `${h.where}: host ${h.host} has no DNS record; hosts in settings: ${[...records.keys()].join(', ')}`);
      if (rec.type === 'A') {
        assert.equal(rec.content, settings.network.ingressIP, `${h.where}: ${h.host} is an A record to ${rec.content}, not the ingress VIP`);
      } else {
        const rule = r.tunnel?.ingress.find((t) => t.hostname === h.host);
        assert.ok(rule, `${h.where}: ${h.host} is a CNAME but has no tunnel rule`);
        assert.equal(rule.service, DEFAULTS.ingressService, `${h.where}: the tunnel sends ${h.host} elsewhere than the Cilium ingress`);
      }
    }
  });

  it('every rendered record is served: an Ingress for the ingress VIP and the tunnel, a LoadBalancer Service for its own IP', async () => {
    const r = await rendered();
    const hosts = new Set(ingressHosts().map((h) => h.host));
    const argocdHost = fqdn(settings.argocd.hostname, settings.domain); // the daemon's Argo CD chart owns that Ingress
    const lbServices = allObjects().filter((o) => o.kind === 'Service' && o.spec?.type === 'LoadBalancer');
    for (const rec of r.dns!.flatMap((z) => z.records)) {
      if (rec.name === argocdHost) continue;
      const viaIngress = rec.type === 'CNAME' || rec.content === settings.network.ingressIP;
      if (viaIngress) {
        assert.ok(hosts.has(rec.name), `DNS record ${rec.name} (${rec.type} ${rec.content}) has no Ingress with that host`);
      } else {
        const svc = lbServices.find((s) => s.metadata.annotations?.['lbipam.cilium.io/ips'] === rec.content);
        assert.ok(svc, `DNS record ${rec.name} -> ${rec.content}: no LoadBalancer Service pinned to that IP with lbipam.cilium.io/ips`);
      }
    }
  });

  it('Ingresses use the cilium class and point at a Service port that exists', () => {
    for (const a of apps) {
      for (const ing of ofKind(a, 'Ingress')) {
        assert.equal(ing.spec.ingressClassName, 'cilium', `${a.name}/${ing.metadata.name}`);
        for (const rule of ing.spec.rules) {
          for (const p of rule.http.paths) {
            const svc = one(a, 'Service', p.backend.service.name);
            const port = p.backend.service.port;
            assert.ok(
              svc.spec.ports.some((sp: Obj) => (port.name !== undefined ? sp.name === port.name : sp.port === port.number)),
              `${a.name}: Ingress ${ing.metadata.name} points at port ${JSON.stringify(port)} which Service ${svc.metadata.name} lacks`,
            );
          }
        }
      }
    }
  });
});

// ---- policies over every workload ----

describe('workload policies', () => {
  const workloads = () => apps.flatMap((a) => podSpecs(a.objects).map((p) => ({ app: a, ...p })));

  it('finds the workloads (a test over nothing proves nothing)', () => {
    assert.ok(workloads().length >= 8);
  });

  it('every image is pinned to a version', () => {
    for (const w of workloads()) {
      for (const c of containersOf(w.spec)) {
        assert.equal(imagePinProblem(c.image), undefined, `${w.app.name}/${c.name}: ${imagePinProblem(c.image)}`);
      }
    }
  });

  it('the pin check itself rejects floating and missing tags', () => {
    for (const bad of ['nginx', 'nginx:latest', 'ghcr.io/a/b:main', 'lscr.io/linuxserver/sonarr:develop', 'localhost:5000/x', 'x:version-latest']) {
      assert.notEqual(imagePinProblem(bad), undefined, bad);
    }
    for (const good of ['busybox:1.37.0', 'mendhak/http-https-echo:37', 'localhost:5000/x:1.2.3', 'x/y@sha256:' + 'a'.repeat(64), 'x:v1.2.3-ls12']) {
      assert.equal(imagePinProblem(good), undefined, good);
    }
  });

  it('every container, init containers included, requests CPU and memory', () => {
    for (const w of workloads()) {
      for (const c of containersOf(w.spec)) {
        assert.ok(c.resources?.requests?.cpu, `${w.app.name}/${c.name}: no cpu request`);
        assert.ok(c.resources?.requests?.memory, `${w.app.name}/${c.name}: no memory request`);
      }
    }
  });

  it('every container that serves a port has readiness and liveness probes on a declared port', () => {
    for (const w of workloads()) {
      for (const c of w.spec.containers) {
        if (!c.ports?.length) continue;
        for (const kind of ['readinessProbe', 'livenessProbe'] as const) {
          assert.ok(c[kind], `${w.app.name}/${c.name}: no ${kind}`);
        }
        for (const kind of ['readinessProbe', 'livenessProbe', 'startupProbe'] as const) {
          const port = c[kind]?.httpGet?.port;
          if (port === undefined) continue;
          assert.ok(
            c.ports.some((p: Obj) => p.name === port || p.containerPort === port),
            `${w.app.name}/${c.name}: ${kind} uses port ${port}, which the container does not declare`,
          );
        }
      }
    }
  });

  it('every Service selects a workload and targets a port its containers declare', () => {
    for (const a of apps) {
      for (const svc of ofKind(a, 'Service')) {
        const targets = podSpecs(a.objects).filter((p) => labelsMatch(svc.spec.selector, p.owner.spec.template.metadata.labels));
        assert.equal(targets.length, 1, `${a.name}: Service ${svc.metadata.name} selects ${targets.length} workloads`);
        const ports = targets[0]!.spec.containers.flatMap((c: Obj) => c.ports ?? []);
        for (const sp of svc.spec.ports) {
          assert.ok(
            ports.some((p: Obj) => p.name === sp.targetPort || p.containerPort === sp.targetPort),
            `${a.name}: Service ${svc.metadata.name} targets ${sp.targetPort}, not a container port`,
          );
        }
      }
    }
  });

  it('every Deployment selector matches its pod labels', () => {
    for (const w of workloads()) {
      assert.ok(labelsMatch(w.owner.spec.selector.matchLabels, w.owner.spec.template.metadata.labels), `${w.app.name}/${w.owner.metadata.name}`);
    }
  });

  it('config lives on a homelab-configs PVC of the same app, at /var/data/configs/<app>, that nothing deletes', () => {
    for (const w of workloads()) {
      for (const v of w.spec.volumes ?? []) {
        if (!v.persistentVolumeClaim) continue;
        const pvc = one(w.app, 'PersistentVolumeClaim', v.persistentVolumeClaim.claimName);
        assert.equal(pvc.spec.storageClassName, 'homelab-configs', `${w.app.name}/${pvc.metadata.name}`);
        assert.match(pvc.metadata.annotations?.['argocd.argoproj.io/sync-options'] ?? '', /Delete=false/, `${w.app.name}/${pvc.metadata.name}`);
      }
    }
    for (const name of ['plex', 'sonarr', 'radarr', 'prowlarr', 'overseerr', 'transmission']) {
      const a = app(name);
      const c = podSpecs(a.objects)[0]!;
      const main = c.spec.containers[0];
      // Seerr keeps its state in /app/config; every other app in /config.
      const config = resolvePath(c.spec, main, name === 'overseerr' ? '/app/config' : '/config');
      const claim = config?.volume?.persistentVolumeClaim?.claimName;
      assert.ok(claim, `${name}: the config directory is not on a PVC`);
      const pvc = one(a, 'PersistentVolumeClaim', claim);
      // The directory the provisioner makes: exactly where SPEC.md's layout keeps this app's config.
      assert.equal(claimHostPath(pvc, name), `/var/data/configs/${name}`, `${name}: config`);
      // SQLite on ReadWriteOnce: a rolling update would run two pods against one database.
      assert.equal(c.owner.spec.strategy?.type, 'Recreate', `${name}: strategy`);
    }
  });

  it('one homelab-configs claim per namespace (the class names the directory after the namespace)', () => {
    for (const a of apps) {
      const claims = ofKind(a, 'PersistentVolumeClaim').filter((p) => p.spec.storageClassName === 'homelab-configs');
      assert.ok(claims.length <= 1, `${a.name}: ${claims.length} homelab-configs claims would share /var/data/configs/${a.name}`);
    }
  });

  it('no init container copies or restores configs any more (the claims are the host directories)', () => {
    for (const w of workloads()) {
      for (const v of w.spec.volumes ?? []) assert.ok(!String(v.hostPath?.path ?? '').startsWith('/var/data/configs'), `${w.app.name}: mounts ${v.hostPath?.path} beside its claim`);
    }
  });

  it('no plaintext Secret anywhere in the tree; every *.enc.yaml is SOPS-encrypted', () => {
    const files = walk(tree).filter((f) => /\.(ya?ml|json)$/.test(f));
    const encFiles = files.filter((f) => /\.enc\.(yaml|json)$/.test(f));
    assert.ok(encFiles.length >= 3, `expected encrypted secrets for transmission, grafana-admin and plex, found ${encFiles.length}`);
    for (const f of files) {
      const docs = f.endsWith('.json') ? [JSON.parse(readFileSync(f, 'utf8'))] : readDocs(f);
      for (const d of docs) {
        if (d?.kind === 'Secret') assert.ok(encFiles.includes(f), `${relative(gitopsRoot, f)}: a Secret outside an encrypted *.enc.yaml`);
      }
    }
    for (const f of encFiles) assertSopsEncrypted(f);
  });
});

// ---- SOPS: structure only, never decrypted ----

const sopsConfig = (): Obj => parseYaml(readFileSync(join(gitopsRoot, '.sops.yaml'), 'utf8'));
const encFiles = (): string[] => walk(tree).filter((f) => /\.enc\.(yaml|json)$/.test(f));
/** The creation rule sops would pick for a file: the first whose path_regex matches its repo path. */
function ruleFor(file: string): Obj | undefined {
  const rel = relative(gitopsRoot, file);
  return sopsConfig().creation_rules.find((r: Obj) => r.path_regex !== undefined && new RegExp(r.path_regex).test(rel));
}
const ruleRecipients = (rule: Obj): string[] => (rule?.key_groups ?? []).flatMap((g: Obj) => g.age ?? []).concat(rule?.age ? String(rule.age).split(',').map((x) => x.trim()) : []);
const fileRecipients = (file: string): string[] => (readDocs(file)[0]?.sops?.age ?? []).map((a: Obj) => a.recipient);

function assertSopsEncrypted(file: string): void {
  const rel = relative(gitopsRoot, file);
  const docs = readDocs(file);
  assert.equal(docs.length, 1, `${rel}: one document per encrypted file (sops encrypts each file as a whole)`);
  const doc = docs[0];
  assert.ok(doc.sops, `${rel}: no sops metadata, so not encrypted`);
  assert.match(doc.sops.mac ?? '', /^ENC\[AES256_GCM,/, `${rel}: no sops MAC`);
  const recipients = fileRecipients(file);
  assert.ok(recipients.length > 0, `${rel}: not encrypted to any age recipient`);
  const rule = ruleFor(file);
  assert.ok(rule, `${rel}: no creation rule in .sops.yaml matches it`);
  for (const r of recipients) assert.ok(ruleRecipients(rule).includes(r), `${rel}: recipient ${r} is not in its .sops.yaml rule (run sops updatekeys)`);
  for (const r of ruleRecipients(rule)) assert.ok(recipients.includes(r), `${rel}: not encrypted to ${r} of its .sops.yaml rule (run sops updatekeys)`);
  let leaves = 0;
  const visit = (v: unknown, at: string): void => {
    if (v === undefined) return;
    if (v !== null && typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) visit(x, `${at}.${k}`);
      return;
    }
    leaves++;
    assert.match(String(v), /^ENC\[AES256_GCM,data:/, `${rel}: ${at} is plaintext`);
  };
  if (doc.kind === 'Secret') {
    assert.ok(doc.data || doc.stringData, `${rel}: Secret without data`);
    visit(doc.data, 'data');
    visit(doc.stringData, 'stringData');
  } else {
    for (const [k, v] of Object.entries(doc)) if (k !== 'sops') visit(v, k);
  }
  assert.ok(leaves > 0, `${rel}: nothing encrypted`);
}

describe('SOPS setup (structure: rules, generators, Secret keys; nothing is decrypted)', () => {
  it('.sops.yaml has the rule for manifests/argocd-homelab/*.enc.(yaml|json), encrypting only data, and it covers every encrypted file', () => {
    const cfg = sopsConfig();
    const rule = cfg.creation_rules.find((r: Obj) => r.path_regex === 'manifests/argocd-homelab/.*\\.enc\\.(yaml|json)$');
    assert.ok(rule, `no rule with SPEC.md's path_regex; have ${cfg.creation_rules.map((r: Obj) => r.path_regex).join(', ')}`);
    assert.equal(rule.encrypted_regex, '^(data|stringData)$', 'kind and metadata must stay readable for Kustomize and review');
    assert.ok(ruleRecipients(rule).length > 0 && ruleRecipients(rule).every((r) => /^age1[0-9a-z]{58}$/.test(r)), `rule recipients ${ruleRecipients(rule)}`);
    const re = new RegExp(rule.path_regex);
    assert.ok(encFiles().length >= 3, `expected encrypted secrets for transmission, grafana-admin and plex, found ${encFiles().length}`);
    for (const f of encFiles()) {
      assert.match(relative(gitopsRoot, f), re);
      assert.deepEqual(ruleFor(f), rule, `${relative(gitopsRoot, f)}: an earlier rule catches it`);
    }
    assert.doesNotMatch('manifests/argocd-homelab/media/transmission/deployment.yaml', re);
  });

  it('every *.enc.yaml is encrypted, to exactly the recipients of its rule', () => {
    for (const f of encFiles()) assertSopsEncrypted(f);
  });

  it('every encrypted file is named by exactly one ksops generator of its own app, and every generator file exists', () => {
    const named = new Map<string, string>();
    for (const a of apps) {
      for (const g of a.kustomization.generators ?? []) {
        const gen = parseYaml(readFileSync(join(a.dir, g), 'utf8'));
        assert.equal(gen.apiVersion, 'viaduct.ai/v1', `${a.name}/${g}`);
        assert.equal(gen.kind, 'ksops', `${a.name}/${g}`);
        assert.match(gen.metadata.annotations['config.kubernetes.io/function'], /exec:\s*\n\s*path: ksops/, `${a.name}/${g}: ksops runs as an exec KRM function found on PATH`);
        for (const f of gen.files) {
          const abs = join(a.dir, f);
          assert.ok(existsSync(abs), `${a.name}/${g}: ${f} does not exist`);
          assert.ok(!named.has(abs), `${f} is generated twice`);
          named.set(abs, a.name);
        }
      }
    }
    assert.deepEqual([...named.keys()].sort(), encFiles().sort(), 'an encrypted file no generator uses, or a generator file that is not encrypted');
  });

  it('each Secret has exactly the keys its workload reads, in the namespace it is read from', () => {
    const found: Record<string, string[]> = {};
    for (const f of encFiles()) {
      const a = apps.find((x) => f.startsWith(`${x.dir}/`));
      assert.ok(a, `${f} is outside an app directory`);
      const doc = readDocs(f)[0];
      assert.equal(doc.kind, 'Secret', relative(gitopsRoot, f));
      const ns = doc.metadata.namespace ?? a.kustomization.namespace;
      found[`${ns}/${doc.metadata.name}`] = Object.keys({ ...(doc.data ?? {}), ...(doc.stringData ?? {}) }).sort();
    }
    assert.deepEqual(found, SECRET_KEYS);
  });

  it('example secrets are marked as examples: encrypted to the published example key only together with the marker', () => {
    // The shipped files are examples, encrypted to a key whose private half is public (test/). A
    // user's own tree has other recipients and no marker; check-repo refuses the example key.
    for (const f of encFiles()) {
      const rel = relative(gitopsRoot, f);
      const text = readFileSync(f, 'utf8');
      const example = fileRecipients(f).some(isExampleRecipient);
      const marked = /^# EXAMPLE/m.test(text);
      assert.equal(marked, example, example ? `${rel}: encrypted to the example key but not marked "# EXAMPLE"` : `${rel}: marked "# EXAMPLE" but encrypted to a real key`);
    }
    const exampleInRules = sopsConfig().creation_rules.some((r: Obj) => ruleRecipients(r).some(isExampleRecipient));
    if (exampleInRules) assert.match(readFileSync(join(gitopsRoot, '.sops.yaml'), 'utf8'), /EXAMPLE/, '.sops.yaml lists the example key without saying so');
  });

  it('the example recipient is the public half of the example key under test/, and no age private key is outside test/', async () => {
    const key = readFileSync(exampleKeyFile, 'utf8');
    const pub = /^# public key: (age1[0-9a-z]+)$/m.exec(key)?.[1];
    assert.equal(pub, EXAMPLE_AGE_RECIPIENT, 'src/gitops/example-key.ts and test/fixtures/age/test-key.txt disagree');
    // The public key comment is not trusted: derive the recipient from the identity with age itself.
    const { identityToRecipient } = await import('age-encryption');
    const identity = key.split('\n').find((l) => l.startsWith('AGE-SECRET-KEY-1'));
    assert.ok(identity);
    assert.equal(await identityToRecipient(identity), EXAMPLE_AGE_RECIPIENT);

    const AGE_IDENTITY = /AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}/;
    // Tracked and untracked files alike (ignored ones such as node_modules/.bin excepted).
    const ls = spawnSync('git', ['ls-files', '--cached', '--others', '--exclude-standard', '-z'], { cwd: repoRoot, encoding: 'utf8' });
    assert.equal(ls.status, 0, ls.stderr);
    const leaks = ls.stdout
      .split('\0')
      .filter((f) => f && !f.startsWith('test/') && existsSync(join(repoRoot, f)) && statSync(join(repoRoot, f)).isFile())
      .filter((f) => AGE_IDENTITY.test(readFileSync(join(repoRoot, f), 'utf8')));
    assert.deepEqual(leaks, [], 'an age private key outside test/');
  });

  it('the encrypted-file check rejects a plaintext value and a recipient outside the rule', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hb-sops-'));
    try {
      const src = encFiles().find((f) => f.includes('/transmission/'))!;
      const doc = parseYaml(readFileSync(src, 'utf8'));
      const key = Object.keys(doc.stringData ?? doc.data)[0]!;
      const f = join(dir, 'manifests', 'argocd-homelab', 'secrets.enc.yaml');
      mkdirSync(dirname(f), { recursive: true });
      const plain = structuredClone(doc);
      (plain.stringData ?? plain.data)[key] = 'hunter2';
      writeFileSync(f, JSON.stringify(plain));
      assert.throws(() => assertSopsEncrypted(f), /plaintext|rule/);
      const stranger = structuredClone(doc);
      stranger.sops.age[0].recipient = 'age1' + 'q'.repeat(58);
      writeFileSync(f, JSON.stringify(stranger));
      assert.throws(() => assertSopsEncrypted(f), /not in its \.sops\.yaml rule|no creation rule/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ---- per-app requirements ----

describe('infra/cloudflared', () => {
  const a = app('cloudflared');
  const d = one(a, 'Deployment', 'cloudflared');
  const c = d.spec.template.spec.containers[0];

  it('runs the tunnel with the daemon-written token and metrics on :2000', () => {
    assert.match(c.image, /^(docker\.io\/)?cloudflare\/cloudflared:\d{4}\.\d+\.\d+$/);
    assert.deepEqual([...(c.command ?? []), ...(c.args ?? [])].filter((x: string) => x !== 'cloudflared'), ['tunnel', '--no-autoupdate', '--metrics', '0.0.0.0:2000', 'run']);
    const token = c.env.find((e: Obj) => e.name === 'TUNNEL_TOKEN');
    assert.deepEqual(token?.valueFrom?.secretKeyRef, { name: 'tunnel-token', key: 'token' });
    assert.ok(d.spec.replicas >= 1 && d.spec.replicas <= 2);
    assert.ok(!ofKind(a, 'Secret').length, 'the tunnel token is the daemon\'s, never in git');
  });

  it('probes /ready on port 2000', () => {
    for (const p of [c.readinessProbe, c.livenessProbe]) {
      assert.equal(p.httpGet.path, '/ready');
      const port = c.ports.find((x: Obj) => x.name === p.httpGet.port || x.containerPort === p.httpGet.port);
      assert.equal(port?.containerPort, 2000);
    }
  });

  it('is non-root with a read-only root filesystem', () => {
    const pod = d.spec.template.spec.securityContext;
    assert.equal(pod.runAsNonRoot ?? c.securityContext?.runAsNonRoot, true);
    assert.notEqual(pod.runAsUser ?? c.securityContext?.runAsUser, 0);
    assert.equal(c.securityContext.readOnlyRootFilesystem, true);
    assert.equal(c.securityContext.allowPrivilegeEscalation, false);
  });
});

describe('apps/echo-server', () => {
  it('is a Deployment + Service + Ingress on the cilium class', () => {
    const a = app('echo-server');
    one(a, 'Deployment', 'echo-server');
    one(a, 'Service', 'echo-server');
    assert.equal(one(a, 'Ingress', 'echo-server').spec.ingressClassName, 'cilium');
  });
});

describe('media: shared paths and hard links', () => {
  const exchanging = ['sonarr', 'radarr', 'transmission'];

  it('Sonarr, Radarr and Transmission see /data/media and /data/torrents through ONE mount of /var/data', () => {
    for (const name of exchanging) {
      const w = podSpecs(app(name).objects)[0]!;
      const c = w.spec.containers[0];
      const media = resolvePath(w.spec, c, '/data/media');
      const torrents = resolvePath(w.spec, c, '/data/torrents');
      assert.equal(media?.hostPath, '/var/data/media', `${name}: /data/media`);
      assert.equal(torrents?.hostPath, '/var/data/torrents', `${name}: /data/torrents`);
      // link(2) across two mounts fails with EXDEV even on one disk: imports would become copies.
      assert.equal(media?.mount, torrents?.mount, `${name}: /data/media and /data/torrents are separate mounts, so hard links fail`);
      assert.notEqual(media?.mount.readOnly, true, `${name}: the library must be writable`);
    }
  });

  it('Plex reads the library read-only at both old paths (/data/media of kube-plex, /media of the interim tree), so existing libraries stay available', () => {
    const w = podSpecs(app('plex').objects)[0]!;
    const c = w.spec.containers.find((x: Obj) => x.name === 'plex');
    for (const root of ['/data/media', '/media']) {
      for (const sub of ['tv', 'movies']) assert.equal(resolvePath(w.spec, c, `${root}/${sub}`)?.hostPath, `/var/data/media/${sub}`, root);
      assert.equal(resolvePath(w.spec, c, root)?.mount.readOnly, true, root);
    }
  });

  it('Transmission downloads into /var/data/torrents/{complete,incomplete}', () => {
    const w = podSpecs(app('transmission').objects)[0]!;
    const c = w.spec.containers[0];
    const env = envOf(c);
    assert.equal(resolvePath(w.spec, c, env.TRANSMISSION_DOWNLOAD_DIR!)?.hostPath, '/var/data/torrents/complete');
    assert.equal(resolvePath(w.spec, c, env.TRANSMISSION_INCOMPLETE_DIR!)?.hostPath, '/var/data/torrents/incomplete');
    assert.equal(env.TRANSMISSION_INCOMPLETE_DIR_ENABLED, 'true');
  });

  it('every media app runs as the same user and group (protected_hardlinks: only the owner may hard-link) and has a TZ', () => {
    const ids = new Set<string>();
    for (const name of ['plex', 'sonarr', 'radarr', 'prowlarr', 'overseerr', 'transmission']) {
      const w = podSpecs(app(name).objects)[0]!;
      const c = w.spec.containers[0];
      const env = envOf(c);
      // linuxserver images and haugene take PUID/PGID; Seerr runs as the pod's user.
      const uid = env.PUID ?? String(c.securityContext?.runAsUser ?? w.spec.securityContext?.runAsUser ?? '');
      const gid = env.PGID ?? String(c.securityContext?.runAsGroup ?? w.spec.securityContext?.runAsGroup ?? '');
      assert.match(uid, /^\d+$/, `${name}: user`);
      assert.match(gid, /^\d+$/, `${name}: group`);
      assert.ok(env.TZ, `${name}: TZ`);
      ids.add(`${uid}:${gid}`);
    }
    assert.equal(ids.size, 1, `PUID:PGID differ between apps: ${[...ids].join(', ')}`);
  });
});

describe('media/plex', () => {
  const a = app('plex');
  const w = podSpecs(a.objects)[0]!;

  it('has a LoadBalancer Service pinned with lbipam.cilium.io/ips to the IP the settings give plex', () => {
    const svc = one(a, 'Service', 'plex');
    assert.equal(svc.spec.type, 'LoadBalancer');
    const ip = svc.metadata.annotations['lbipam.cilium.io/ips'];
    assert.equal(ip, '192.168.0.241');
    const host = settings.hosts.find((h) => fqdn(h.name, settings.domain) === fqdn('plex', settings.domain));
    assert.equal(host?.ip, ip, 'the plex host in settings points elsewhere');
    assert.ok(svc.spec.ports.some((p: Obj) => p.port === 32400));
    const { start, stop } = settings.network.lbPool;
    assert.ok(ipToInt(ip) >= ipToInt(start) && ipToInt(ip) <= ipToInt(stop), 'outside the Cilium LB pool');
    // Plex must see client addresses to tell LAN from remote.
    assert.equal(svc.spec.externalTrafficPolicy, 'Local');
  });

  it('sets only variables the linuxserver image reads; PLEX_CLAIM comes, optionally, from the ksops Secret', () => {
    const c = w.spec.containers[0];
    assert.match(c.image, /^lscr\.io\/linuxserver\/plex:/);
    const names = (c.env ?? []).map((e: Obj) => e.name).sort();
    // ADVERTISE_IP and friends belong to plexinc/pms-docker; the linuxserver image ignores them.
    assert.deepEqual(names, ['PGID', 'PLEX_CLAIM', 'PUID', 'TZ', 'VERSION']);
    const claim = c.env.find((e: Obj) => e.name === 'PLEX_CLAIM').valueFrom.secretKeyRef;
    assert.equal(claim.optional, true, 'a claimed server needs no token: the key (or the Secret) may be absent');
    const enc = parseYaml(readFileSync(join(a.dir, 'secrets.enc.yaml'), 'utf8'));
    assert.equal(claim.name, enc.metadata.name);
    assert.ok(claim.key in (enc.stringData ?? enc.data), `Secret ${enc.metadata.name} has no key ${claim.key}`);
    assert.ok(a.kustomization.generators.includes('ksops-generator.yaml'));
  });

  it('has no transcode emptyDir and no restore init container: /config is the host directory itself', () => {
    assert.equal(w.spec.initContainers, undefined);
    assert.ok(!(w.spec.volumes ?? []).some((v: Obj) => v.emptyDir), 'an emptyDir nothing uses');
    const c = w.spec.containers[0];
    assert.ok(!(c.volumeMounts ?? []).some((m: Obj) => m.mountPath === '/transcode'));
  });

  it('the README documents the two Plex network settings (custom server access URL on the VIP, LAN networks)', () => {
    const readme = readFileSync(join(tree, 'README.md'), 'utf8');
    const ip = one(a, 'Service', 'plex').metadata.annotations['lbipam.cilium.io/ips'];
    assert.ok(readme.includes(`http://${ip}:32400`), 'README: custom server access URL');
    assert.match(readme, /Custom server access URLs/);
    assert.match(readme, /LAN Networks/);
  });
});

describe('media/transmission', () => {
  const a = app('transmission');
  const w = podSpecs(a.objects)[0]!;
  const c = w.spec.containers[0];
  const env = envOf(c);

  it('is haugene/transmission-openvpn with NET_ADMIN and the host /dev/net/tun', () => {
    assert.match(c.image, /^(docker\.io\/)?haugene\/transmission-openvpn:\d+\.\d+(\.\d+)?$/);
    assert.ok(c.securityContext?.capabilities?.add?.includes('NET_ADMIN'));
    const tun = resolvePath(w.spec, c, '/dev/net/tun');
    assert.equal(tun?.hostPath, '/dev/net/tun');
    assert.equal(tun?.volume.hostPath.type, 'CharDevice');
    assert.equal(env.CREATE_TUN_DEVICE, 'false');
  });

  it('LOCAL_NETWORK covers the LAN (ingress VIP and LB pool) and the k3s pod and service CIDRs', () => {
    const nets = (env.LOCAL_NETWORK ?? '').split(',').map((s) => s.trim());
    for (const cidr of ['10.42.0.0/16', '10.43.0.0/16']) assert.ok(nets.includes(cidr), `LOCAL_NETWORK lacks ${cidr}`);
    for (const ip of [settings.network.ingressIP, settings.network.lbPool.start, settings.network.lbPool.stop]) {
      assert.ok(nets.some((n) => cidrContains(n, ip)), `LOCAL_NETWORK ${env.LOCAL_NETWORK} does not cover ${ip}`);
    }
  });

  it('takes the NordVPN credentials from the ksops Secret it generates', () => {
    assert.equal(env.OPENVPN_PROVIDER, 'NORDVPN');
    const enc = parseYaml(readFileSync(join(a.dir, 'secrets.enc.yaml'), 'utf8'));
    const gen = parseYaml(readFileSync(join(a.dir, 'ksops-generator.yaml'), 'utf8'));
    assert.equal(gen.kind, 'ksops');
    assert.deepEqual(gen.files, ['./secrets.enc.yaml']);
    assert.match(gen.metadata.annotations['config.kubernetes.io/function'], /exec:\s*\n\s*path: ksops/);
    assert.ok(a.kustomization.generators.includes('ksops-generator.yaml'));
    const refs = (c.envFrom ?? []).map((e: Obj) => e.secretRef?.name);
    assert.ok(refs.includes(enc.metadata.name), `envFrom ${refs} does not use Secret ${enc.metadata.name}`);
    const keys = Object.keys(enc.stringData ?? enc.data);
    assert.deepEqual(keys.sort(), ['OPENVPN_PASSWORD', 'OPENVPN_USERNAME']);
  });

  it('keeps transmission-home where the old setup had it: /var/data/configs/transmission/transmission-home', () => {
    const home = resolvePath(w.spec, c, env.TRANSMISSION_HOME!);
    const claim = one(a, 'PersistentVolumeClaim', home?.volume?.persistentVolumeClaim?.claimName);
    assert.equal(join(claimHostPath(claim, 'transmission'), env.TRANSMISSION_HOME!.slice(home!.mount.mountPath.length)), '/var/data/configs/transmission/transmission-home');
  });

  it('accepts RPC calls for its ingress host and its in-cluster name', () => {
    const allowed = (env.TRANSMISSION_RPC_HOST_WHITELIST ?? '').split(',');
    const ing = one(a, 'Ingress', 'transmission');
    for (const r of ing.spec.rules) assert.ok(allowed.includes(r.host), `${r.host} not in the RPC host whitelist`);
    assert.ok(allowed.includes('transmission.transmission.svc.cluster.local'));
  });
});

// ---- monitoring ----

function monitoringApplication(): Obj {
  return one(app('monitoring'), 'Application', 'kube-prometheus-stack');
}
function monitoringValues(): Obj {
  return monitoringApplication().spec.source.helm.valuesObject;
}

/** The monitors kube-prometheus-stack renders from additionalServiceMonitors/additionalPodMonitors (templates/prometheus/{servicemonitors,podmonitors}.yaml). */
function chartMonitors(application: Obj): Obj[] {
  const v = application.spec.source.helm.valuesObject;
  const release = application.spec.source.helm.releaseName ?? application.metadata.name;
  const ns = application.spec.destination.namespace;
  const labels = (extra: Obj) => ({ app: 'kube-prometheus-stack-prometheus', release, 'app.kubernetes.io/managed-by': 'Helm', ...(extra ?? {}) });
  const sm = (v.prometheus?.additionalServiceMonitors ?? []).map((m: Obj) => ({
    apiVersion: 'monitoring.coreos.com/v1',
    kind: 'ServiceMonitor',
    metadata: { name: m.name, namespace: ns, labels: labels(m.additionalLabels) },
    spec: { endpoints: m.endpoints, selector: m.selector, ...(m.namespaceSelector ? { namespaceSelector: m.namespaceSelector } : {}), ...(m.jobLabel ? { jobLabel: m.jobLabel } : {}) },
  }));
  const pm = (v.prometheus?.additionalPodMonitors ?? []).map((m: Obj) => ({
    apiVersion: 'monitoring.coreos.com/v1',
    kind: 'PodMonitor',
    metadata: { name: m.name, namespace: ns, labels: labels(m.additionalLabels) },
    spec: { podMetricsEndpoints: m.podMetricsEndpoints, selector: m.selector, ...(m.namespaceSelector ? { namespaceSelector: m.namespaceSelector } : {}), ...(m.jobLabel ? { jobLabel: m.jobLabel } : {}) },
  }));
  return [...sm, ...pm];
}

describe('infra/monitoring (kube-prometheus-stack Application)', () => {
  it('is a pinned Helm source with its CRDs, synced server-side', () => {
    const appl = monitoringApplication();
    const src = appl.spec.source;
    assert.equal(src.chart, 'kube-prometheus-stack');
    // Moves together with ../shared/crds/prometheus-operator (pins.yaml says which).
    const pin = pinnedChart('kube-prometheus-stack', tree);
    assert.equal(src.repoURL, pin.repo);
    assert.equal(String(src.targetRevision), pin.version);
    assert.equal(src.helm.skipCrds ?? false, false);
    assert.notEqual(monitoringValues().crds?.enabled, false);
    assert.equal(appl.spec.destination.namespace, 'monitoring');
    assert.ok(appl.spec.syncPolicy.syncOptions.includes('ServerSideApply=true'), 'the CRDs exceed the client-side apply annotation');
    assert.ok(appl.spec.syncPolicy.syncOptions.includes('CreateNamespace=true'));
    assert.deepEqual(appl.spec.syncPolicy.automated, { prune: true, selfHeal: true });
  });

  it('turns off the scrape targets and alert rules k3s with Cilium does not have', () => {
    const v = monitoringValues();
    for (const k of ['kubeProxy', 'kubeControllerManager', 'kubeScheduler', 'kubeEtcd']) assert.equal(v[k]?.enabled, false, `${k}.enabled`);
    for (const k of ['etcd', 'kubeProxy', 'kubeControllerManager', 'kubeSchedulerAlerting', 'kubeSchedulerRecording']) {
      assert.equal(v.defaultRules?.rules?.[k], false, `defaultRules.rules.${k}`);
    }
  });

  it('Alertmanager has no external receivers', () => {
    const cfg = monitoringValues().alertmanager.config;
    assert.ok(cfg.receivers.length > 0);
    for (const r of cfg.receivers) assert.deepEqual(Object.keys(r), ['name'], `receiver ${r.name} sends somewhere`);
    const used = new Set<string>();
    const walkRoute = (r: Obj) => {
      if (r.receiver) used.add(r.receiver);
      (r.routes ?? []).forEach(walkRoute);
    };
    walkRoute(cfg.route);
    for (const u of used) assert.ok(cfg.receivers.some((r: Obj) => r.name === u), `route uses undefined receiver ${u}`);
  });

  it('Prometheus, Alertmanager and Grafana keep data under /var/data/configs/monitoring/<claim>, with retention below the claim size', () => {
    const v = monitoringValues();
    const ps = v.prometheus.prometheusSpec;
    assert.match(ps.retention, /^\d+[dhw]$/);
    const claim = ps.storageSpec.volumeClaimTemplate.spec;
    assert.equal(claim.storageClassName, 'homelab-data');
    // The StatefulSet's claim name: <template name, "prometheus-...-db" by default>-<pod name>.
    const promClaim = { metadata: { name: 'prometheus-kube-prometheus-stack-prometheus-db-prometheus-kube-prometheus-stack-prometheus-0' }, spec: claim };
    assert.equal(claimHostPath(promClaim, 'monitoring'), `/var/data/configs/monitoring/${promClaim.metadata.name}`);
    const gi = Number(/^(\d+)Gi$/.exec(claim.resources.requests.storage)?.[1]);
    const gb = Number(/^(\d+)GB$/.exec(ps.retentionSize)?.[1]);
    assert.ok(gb > 0 && gb * 1e9 < gi * 2 ** 30, `retentionSize ${ps.retentionSize} does not fit the ${claim.resources.requests.storage} claim`);
    assert.equal(v.alertmanager.alertmanagerSpec.storage.volumeClaimTemplate.spec.storageClassName, 'homelab-data');
    assert.equal(v.grafana.persistence.storageClassName, 'homelab-data');
    assert.match(v.grafana.persistence.annotations?.['argocd.argoproj.io/sync-options'] ?? '', /Delete=false/);
    const sc = one(app('storage'), 'StorageClass', 'homelab-data');
    assert.equal(sc.reclaimPolicy, 'Retain', 'deleting a claim must not delete the data');
  });

  it('does not depend on decrypting a secret: no ksops generator in the kustomization of the stack', () => {
    const mon = app('monitoring');
    assert.deepEqual(mon.kustomization.generators ?? [], []);
    assert.deepEqual(mon.objects.map((o) => o.kind), ['Application']);
    assert.deepEqual(app('grafana-admin').objects, [], 'grafana-admin holds only the generated Secret');
  });

  it('Grafana picks up the Cilium, Hubble and operator dashboards the daemon\'s Cilium values ship', () => {
    const sidecar = monitoringValues().grafana.sidecar.dashboards;
    assert.equal(sidecar.searchNamespace, 'ALL');
    const cv = ciliumValues(settings) as Obj;
    for (const [what, d] of Object.entries({ agent: cv.dashboards, operator: cv.operator.dashboards, hubble: cv.hubble.metrics.dashboards })) {
      assert.equal((d as Obj)?.enabled, true, `${what} dashboards`);
      assert.equal((d as Obj).label, sidecar.label ?? 'grafana_dashboard', `${what} dashboards label`);
      assert.equal((d as Obj).labelValue, sidecar.labelValue ?? '1', `${what} dashboards label value`);
    }
  });

  it('Grafana: ingress on the cilium class, default dashboards, admin from the ksops Secret', () => {
    const g = monitoringValues().grafana;
    assert.equal(g.ingress.enabled, true);
    assert.equal(g.ingress.ingressClassName, 'cilium');
    assert.deepEqual(g.ingress.hosts, [fqdn('grafana', settings.domain)]);
    assert.notEqual(g.defaultDashboardsEnabled, false);
    assert.equal(g.adminPassword, undefined, 'a password in values is a plaintext secret in git');
    const enc = parseYaml(readFileSync(join(app('grafana-admin').dir, 'secrets.enc.yaml'), 'utf8'));
    assert.equal(enc.metadata.name, g.admin.existingSecret);
    assert.equal(enc.metadata.namespace ?? app('grafana-admin').kustomization.namespace, 'monitoring');
    const keys = Object.keys(enc.stringData ?? enc.data);
    assert.ok(keys.includes(g.admin.userKey) && keys.includes(g.admin.passwordKey), `Secret keys ${keys} vs ${g.admin.userKey}/${g.admin.passwordKey}`);
  });

  it('main components request resources', () => {
    const v = monitoringValues();
    for (const [what, r] of Object.entries({
      prometheus: v.prometheus.prometheusSpec.resources,
      alertmanager: v.alertmanager.alertmanagerSpec.resources,
      grafana: v.grafana.resources,
      operator: v.prometheusOperator.resources,
      'kube-state-metrics': v['kube-state-metrics'].resources,
      'node-exporter': v['prometheus-node-exporter'].resources,
    })) {
      assert.ok((r as Obj)?.requests?.cpu && (r as Obj)?.requests?.memory, `${what}: no requests`);
    }
  });

  it('scrapes Hubble and Cilium with monitors the release actually selects', () => {
    const appl = monitoringApplication();
    const v = monitoringValues();
    const ps = v.prometheus.prometheusSpec;
    const monitors = chartMonitors(appl);
    // The chart's selector: {} when NilUsesHelmValues is false, else release=<releaseName>.
    const selects = (kind: 'ServiceMonitor' | 'PodMonitor', labels: Record<string, string>) => {
      const key = kind === 'ServiceMonitor' ? 'serviceMonitor' : 'podMonitor';
      const explicit = ps[`${key}Selector`];
      if (explicit) return labelsMatch(explicit.matchLabels ?? {}, labels);
      if (ps[`${key}SelectorNilUsesHelmValues`] === false) return true;
      return labels.release === (appl.spec.source.helm.releaseName ?? appl.metadata.name);
    };
    const hubble = monitors.find((m) => m.kind === 'ServiceMonitor' && m.spec.selector.matchLabels?.['k8s-app'] === 'hubble');
    assert.ok(hubble, 'no ServiceMonitor for the hubble-metrics Service');
    assert.deepEqual(hubble.spec.namespaceSelector.matchNames, ['kube-system']);
    assert.equal(hubble.spec.endpoints[0].port, 'hubble-metrics');
    const agent = monitors.find((m) => m.kind === 'PodMonitor' && m.spec.selector.matchLabels?.['k8s-app'] === 'cilium');
    assert.ok(agent, 'no PodMonitor for the cilium agent');
    assert.equal(agent.spec.podMetricsEndpoints[0].port, 'prometheus');
    for (const m of monitors) assert.ok(selects(m.kind, m.metadata.labels), `${m.kind} ${m.metadata.name} is not selected by the Prometheus of the release`);
    // Monitor selection by namespace: unset or {} means every namespace.
    for (const k of ['serviceMonitorNamespaceSelector', 'podMonitorNamespaceSelector']) {
      assert.ok(ps[k] === undefined || Object.keys(ps[k]).length === 0, `${k} narrows the namespaces`);
    }
  });
});

describe('helpers used above', () => {
  it('resolvePath picks the longest mount and maps into the host path', () => {
    const spec = { volumes: [{ name: 'a', hostPath: { path: '/var/data' } }, { name: 'b', hostPath: { path: '/srv/m' } }] };
    const c = { volumeMounts: [{ name: 'a', mountPath: '/data' }, { name: 'b', mountPath: '/data/media' }] };
    assert.equal(resolvePath(spec, c, '/data/media/tv')?.hostPath, '/srv/m/tv');
    assert.equal(resolvePath(spec, c, '/data/torrents')?.hostPath, '/var/data/torrents');
    assert.equal(resolvePath(spec, c, '/database'), undefined);
  });

  it('cidrContains', () => {
    assert.ok(cidrContains('192.168.0.0/24', '192.168.0.241'));
    assert.ok(!cidrContains('192.168.0.0/24', '192.168.1.1'));
    assert.ok(cidrContains('0.0.0.0/0', '8.8.8.8'));
  });

  it('the app list comes from the settings groups', () => {
    assert.deepEqual([...new Set(apps.map((a) => a.group))].sort(), settings.gitops.groups.slice().sort());
    assert.equal(basename(tree), 'argocd-homelab');
  });
});

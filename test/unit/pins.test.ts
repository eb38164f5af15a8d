// One table of every version pin (manifests/argocd-homelab/pins.yaml) with its upstream project,
// held equal to what the tree, the daemon and the README tables actually use, so a bump starts and
// ends in one place.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { DEFAULTS } from '../../src/settings/schema.ts';
import { defaultTree as tree, readPins, type Pin } from '../rig/pins.ts';

type Obj = any;
const repoRoot = resolve(tree, '..', '..');
const table = readPins();

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => (statSync(join(dir, n)).isDirectory() ? walk(join(dir, n)) : [join(dir, n)]));
}

/** name:version splits at the last colon after the last slash (a registry may carry a port). */
function splitImage(image: string): { name: string; version: string } {
  const at = image.lastIndexOf(':');
  assert.ok(at > image.lastIndexOf('/'), `${image}: no tag`);
  return { name: image.slice(0, at), version: image.slice(at + 1) };
}

/** Every image and chart pinned in the tree, with the file it is pinned in. */
function usedPins(): { images: (Pin & { file: string })[]; charts: (Pin & { file: string })[] } {
  const images: (Pin & { file: string })[] = [];
  const charts: (Pin & { file: string })[] = [];
  for (const file of walk(tree).filter((f) => f.endsWith('.yaml') && !f.endsWith('pins.yaml'))) {
    for (const doc of parseAllDocuments(readFileSync(file, 'utf8'))) {
      const o: Obj = doc.toJS();
      const rel = relative(repoRoot, file);
      const spec = o?.spec?.template?.spec;
      for (const c of [...(spec?.initContainers ?? []), ...(spec?.containers ?? [])]) images.push({ ...splitImage(c.image), upstream: '', file: rel });
      const src = o?.kind === 'Application' ? o.spec?.source : undefined;
      if (src?.chart) charts.push({ name: src.chart, repo: src.repoURL, version: String(src.targetRevision), upstream: '', file: rel });
    }
  }
  images.push({ ...splitImage(DEFAULTS.ksopsImage), upstream: '', file: 'src/settings/schema.ts (DEFAULTS.ksopsImage)' });
  for (const [key, c] of Object.entries({ cilium: DEFAULTS.cilium, argocd: DEFAULTS.argocd })) {
    charts.push({ name: c.chart, repo: c.repo, version: c.version, upstream: '', file: `src/settings/schema.ts (DEFAULTS.${key})` });
  }
  return { images, charts };
}

test('every pin of the tree is in pins.yaml with the same version, and every row is used', () => {
  const used = usedPins();
  assert.ok(used.images.length >= 8 && used.charts.length >= 3, 'the walk found the pins');
  for (const [kind, rows, uses] of [['image', table.images, used.images], ['chart', table.charts, used.charts]] as const) {
    for (const u of uses) {
      const row = rows.find((r) => r.name === u.name);
      assert.ok(row, `${u.file}: ${kind} ${u.name} is not in manifests/argocd-homelab/pins.yaml`);
      assert.equal(row.version, u.version, `${u.file}: ${kind} ${u.name}:${u.version}, but pins.yaml says ${row.version}; bump both`);
      if (kind === 'chart') assert.equal(row.repo, u.repo, `${u.file}: chart ${u.name} comes from ${u.repo}, pins.yaml says ${row.repo}`);
    }
    for (const r of rows) assert.ok(uses.some((u) => u.name === r.name), `pins.yaml lists ${kind} ${r.name}, which nothing uses`);
  }
});

test('each pin names its upstream project and a real version (no floating tag)', () => {
  const names = [...table.images, ...table.charts].map((p) => p.name);
  assert.deepEqual([...new Set(names)].sort(), names.slice().sort(), 'a pin is listed twice');
  for (const p of [...table.images, ...table.charts]) {
    assert.match(p.upstream, /^https:\/\/github\.com\/[^/]+\/[^/]+/, `${p.name}: upstream must be the project's GitHub page`);
    assert.match(String(p.version), /^v?\d+(\.\d+)*$/, `${p.name}: ${p.version} is not a release version`);
  }
});

test('Overseerr is gone for its maintained successor, and Transmission ships 4.1 (haugene >= 5.5)', () => {
  const images = table.images.map((p) => p.name);
  assert.ok(!images.some((n) => /overseerr/.test(n)), 'Overseerr was archived upstream; run Seerr');
  assert.ok(images.includes('ghcr.io/seerr-team/seerr'));
  const t = table.images.find((p) => p.name === 'haugene/transmission-openvpn');
  const [major, minor] = String(t?.version).split('.').map(Number);
  assert.ok(major! > 5 || (major === 5 && minor! >= 5), `haugene/transmission-openvpn ${t?.version} ships Transmission 4.0.5, which trackers refuse`);
});

/** The Image cells of the apps table that follows `heading` (the first `| App |` table after it). */
function imageCells(file: string, heading: string): string[] {
  const lines = readFileSync(join(repoRoot, file), 'utf8').split('\n');
  const from = lines.indexOf(heading);
  assert.ok(from >= 0, `${file}: no "${heading}"`);
  const start = lines.findIndex((l, i) => i > from && l.startsWith('| App |'));
  assert.ok(start > from, `${file}: no apps table under "${heading}"`);
  const end = lines.findIndex((l, i) => i > start && !l.startsWith('|'));
  const cells = (l: string) => l.split('|').slice(1, -1).map((c) => c.trim());
  const col = cells(lines[start]!).findIndex((c) => c.startsWith('Image'));
  assert.ok(col > 0, `${file}: the apps table has no Image column`);
  return lines.slice(start + 2, end).map((l) => cells(l)[col]!);
}

test('the README apps tables show the pinned versions (a stale row fails)', () => {
  const treeImages = new Set(usedPins().images.filter((u) => !u.file.startsWith('src/')).map((u) => u.name));
  for (const [file, heading] of [['README.md', '## The GitOps tree'], ['manifests/argocd-homelab/README.md', '## Apps']] as const) {
    const seen = new Set<string>();
    for (const cell of imageCells(file, heading)) {
      for (const m of cell.matchAll(/`([^`\s]+):([^`\s:]+)`/g)) {
        const pin = table.images.find((p) => p.name === m[1]);
        assert.ok(pin, `${file}: ${m[1]} is not in pins.yaml`);
        assert.equal(m[2], pin.version, `${file}: ${m[1]}:${m[2]}, but pins.yaml says ${pin.version}`);
        seen.add(pin.name);
      }
      for (const m of cell.matchAll(/([\w-]+) chart (v?\d[\w.]*)/g)) {
        const pin = table.charts.find((p) => p.name === m[1]);
        assert.ok(pin, `${file}: chart ${m[1]} is not in pins.yaml`);
        assert.equal(m[2], pin.version, `${file}: chart ${m[1]} ${m[2]}, but pins.yaml says ${pin.version}`);
      }
    }
    assert.deepEqual([...seen].sort(), [...treeImages].sort(), `${file}: the apps table should show every image of the tree`);
  }
});

/** What Renovate's custom regex managers extract from the files they match, as Renovate reads them. */
function renovateExtract(cfg: Obj): { file: string; datasource: string; depName: string; currentValue: string; registryUrl?: string }[] {
  const candidates = [...walk(tree), join(repoRoot, 'src', 'settings', 'schema.ts')].map((f) => relative(repoRoot, f));
  return cfg.customManagers.flatMap((m: Obj) => {
    assert.equal(m.customType, 'regex');
    const patterns = (m.managerFilePatterns as string[]).map((p) => new RegExp(p.replace(/^\/(.*)\/$/, '$1')));
    const files = candidates.filter((f) => patterns.some((p) => p.test(f)));
    assert.ok(files.length > 0, `${m.description}: matches no file`);
    return files.flatMap((file) => {
      const text = readFileSync(join(repoRoot, file), 'utf8');
      const found = (m.matchStrings as string[]).flatMap((re) => [...text.matchAll(new RegExp(re, 'g'))]);
      assert.ok(found.length > 0, `${m.description}: extracts nothing from ${file}`);
      return found.map((x) => {
        const registryUrl: string | undefined = x.groups!.registryUrl ?? m.registryUrlTemplate;
        return { file, datasource: m.datasourceTemplate, depName: x.groups!.depName!, currentValue: x.groups!.currentValue!, ...(registryUrl ? { registryUrl } : {}) };
      });
    });
  });
}

test('renovate.json: each regex manager matches its file today and extracts every pin with its version', () => {
  const cfg = JSON.parse(readFileSync(join(repoRoot, 'renovate.json'), 'utf8'));
  const key = (d: { file: string; datasource: string; depName: string; currentValue: string; registryUrl?: string }) =>
    `${d.file} ${d.datasource} ${d.depName} ${d.currentValue}${d.registryUrl ? ` @${d.registryUrl}` : ''}`;
  const pins = 'manifests/argocd-homelab/pins.yaml';
  const schema = 'src/settings/schema.ts';
  const want = [
    ...table.images.map((p) => ({ file: pins, datasource: 'docker', depName: p.name, currentValue: p.version })),
    ...table.charts.map((p) => ({ file: pins, datasource: 'helm', depName: p.name, currentValue: p.version, registryUrl: p.repo })),
    { file: schema, datasource: 'docker', ...(({ name, version }) => ({ depName: name, currentValue: version }))(splitImage(DEFAULTS.ksopsImage)) },
    { file: schema, datasource: 'helm', depName: 'cilium', currentValue: DEFAULTS.cilium.version, registryUrl: 'https://helm.cilium.io' },
    { file: schema, datasource: 'helm', depName: 'argo-cd', currentValue: DEFAULTS.argocd.version, registryUrl: 'https://argoproj.github.io/argo-helm' },
  ];
  assert.deepEqual(renovateExtract(cfg).map(key).sort(), want.map(key).sort());
});

test('renovate.json: a daemon chart bump waits for approval (it needs the Nix hash and test charts too)', () => {
  const cfg = JSON.parse(readFileSync(join(repoRoot, 'renovate.json'), 'utf8'));
  for (const name of ['cilium', 'argo-cd', 'kube-prometheus-stack']) {
    const rule = cfg.packageRules.find((r: Obj) => r.matchPackageNames?.includes(name));
    assert.equal(rule?.dependencyDashboardApproval, true, `${name} needs dependencyDashboardApproval`);
  }
});

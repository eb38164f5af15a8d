// One table of every version pin (manifests/argocd-homelab/pins.yaml) with its upstream project,
// held equal to what the tree and the daemon actually use, so a bump starts and ends in one place.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { DEFAULTS } from '../../src/settings/schema.ts';

type Obj = any;
const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const tree = join(repoRoot, 'manifests', 'argocd-homelab');

interface Pin {
  name: string;
  version: string;
  upstream: string;
  repo?: string;
}
const table = parseYaml(readFileSync(join(tree, 'pins.yaml'), 'utf8')) as { images: Pin[]; charts: Pin[] };

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
  return { images, charts };
}

test('every pin of the tree is in pins.yaml with the same version, and every row is used', () => {
  const used = usedPins();
  assert.ok(used.images.length >= 8 && used.charts.length >= 1, 'the walk found the pins');
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

test('renovate.json parses and covers the tree and pins.yaml', () => {
  const cfg = JSON.parse(readFileSync(join(repoRoot, 'renovate.json'), 'utf8'));
  const patterns = JSON.stringify(cfg);
  assert.match(patterns, /pins\\\\\.yaml/);
  const pinsRule = cfg.customManagers.find((m: Obj) => m.datasourceTemplate === 'docker' && String(m.managerFilePatterns).includes('pins'));
  const re = new RegExp(pinsRule.matchStrings[0], 'g');
  const found = [...readFileSync(join(tree, 'pins.yaml'), 'utf8').matchAll(re)].map((m) => `${m.groups?.depName}:${m.groups?.currentValue}`);
  assert.deepEqual(found.sort(), table.images.map((p) => `${p.name}:${p.version}`).sort(), 'the Renovate regex does not see every image row');
});

// manifests/argocd-homelab/pins.yaml, the one table of version pins: tests take expected versions
// from it so that a bump is pins.yaml plus the line that uses the pin, never a test.
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';

export interface Pin {
  name: string;
  version: string;
  upstream: string;
  repo?: string;
}

export const defaultTree = join(resolve(dirname(fileURLToPath(import.meta.url)), '..', '..'), 'manifests', 'argocd-homelab');

export function readPins(tree: string = defaultTree): { images: Pin[]; charts: Pin[] } {
  const raw = parseYaml(readFileSync(join(tree, 'pins.yaml'), 'utf8')) as { images: Pin[]; charts: Pin[] };
  // A bare `version: 40` parses as a number; a pin is compared as the text it is in the manifests.
  const norm = (p: Pin): Pin => ({ ...p, version: String(p.version) });
  return { images: raw.images.map(norm), charts: raw.charts.map(norm) };
}

function find(rows: Pin[], name: string, kind: string): Pin {
  const row = rows.find((p) => p.name === name);
  if (!row) throw new Error(`pins.yaml has no ${kind} ${name}`);
  return row;
}

/** `name:version` of an image pinned in pins.yaml. */
export function pinnedImage(name: string, tree?: string): string {
  return `${name}:${find(readPins(tree).images, name, 'image').version}`;
}

export function pinnedChart(name: string, tree?: string): Pin {
  return find(readPins(tree).charts, name, 'chart');
}

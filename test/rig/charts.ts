// The real upstream charts beside the repository (../shared/charts, see its README), as the
// demo, the bench and the Helm tests install them. HB_SHARED_DIR points elsewhere when the
// repository is not next to that folder.
import { accessSync, constants } from 'node:fs';
import { join, resolve } from 'node:path';
import { repoRoot } from './binaries.ts';
import { DEFAULTS } from '../../src/settings/schema.ts';

export const sharedDir = process.env.HB_SHARED_DIR ? resolve(process.env.HB_SHARED_DIR) : resolve(repoRoot, '..', 'shared');

/** The Cilium chart versions held locally: the default and the ones an upgrade test needs. */
export const CILIUM_VERSIONS = ['1.18.4', '1.19.6', '1.20.0'] as const;
export type CiliumVersion = (typeof CILIUM_VERSIONS)[number];

function chartFile(name: string, version: string): string {
  const p = join(sharedDir, 'charts', `${name}-${version}.tgz`);
  try {
    accessSync(p, constants.R_OK);
  } catch {
    throw new Error(`real chart ${name} ${version} is missing at ${p}; put the published .tgz there (see ${join(sharedDir, 'charts', 'README.md')}) or set HB_SHARED_DIR`);
  }
  return p;
}

/** The packaged upstream Cilium chart, by default the version the daemon pins. */
export function ciliumChart(version: string = DEFAULTS.cilium.version): string {
  return chartFile('cilium', version);
}

/** The packaged upstream argo-cd chart the daemon pins (it ships Argo CD's CRDs as templates). */
export function argocdChart(version: string = DEFAULTS.argocd.version): string {
  return chartFile('argo-cd', version);
}

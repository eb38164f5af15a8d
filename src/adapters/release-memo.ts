// What a Helm release Secret decoded to, remembered in the state directory by the Secret's uid
// and resourceVersion. A record is the chart's templates, files and manifest, gzipped: 2.5 MB
// (Cilium) and 5 MB (Argo CD) of JSON once decoded, about 15 MiB of memory each for a moment,
// on every boot, to learn four fields. The apiserver changes a Secret's resourceVersion with
// every write and a new revision is a new Secret, so a remembered summary is exactly what the
// Secret would decode to again; anything else (a wiped cluster, a lost file) is a miss, and a
// miss only costs the decode. Values are kept as a digest, not as values.
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ChartMeta } from './chart-meta.ts';

/** A release record without its values: what the daemon compares, and a digest of the values. */
export interface ReleaseSummary {
  revision: number;
  status: string;
  chart: ChartMeta;
  valuesDigest: string;
}

export interface SecretVersion {
  uid: string;
  resourceVersion: string;
}

export interface ReleaseMemo {
  get(secret: SecretVersion): ReleaseSummary | undefined;
  put(secret: SecretVersion, summary: ReleaseSummary): void;
}

/** sha256 of the values as JSON with sorted keys: equal digests mean equal values. */
export function valuesDigest(values: unknown): string {
  return createHash('sha256').update(JSON.stringify(sorted(values))).digest('hex');
}

function sorted(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sorted);
  if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted((v as Record<string, unknown>)[k])]));
  return v;
}

/** The releases the daemon manages, and a few revisions of each: plenty, and the file stays small. */
const KEEP = 16;
const FILE = 'helm-releases.json';

/** Kept in memory only, e.g. when there is no state directory. */
export function memoryReleaseMemo(): ReleaseMemo {
  return fileBacked(undefined);
}

/** Kept in `stateDir`; a file that cannot be read or parsed is an empty memo. */
export function stateDirReleaseMemo(stateDir: string): ReleaseMemo {
  return fileBacked(stateDir);
}

function fileBacked(stateDir: string | undefined): ReleaseMemo {
  const key = (s: SecretVersion) => `${s.uid}@${s.resourceVersion}`;
  let entries: Map<string, ReleaseSummary> | undefined;
  const load = (): Map<string, ReleaseSummary> => {
    if (entries) return entries;
    entries = new Map();
    if (!stateDir) return entries;
    try {
      const file = JSON.parse(readFileSync(join(stateDir, FILE), 'utf8')) as { entries?: [string, ReleaseSummary][] };
      for (const [k, v] of file.entries ?? []) if (typeof k === 'string' && isSummary(v)) entries.set(k, v);
    } catch {
      // absent or damaged: every release is decoded once more and remembered again
    }
    return entries;
  };
  return {
    get: (s) => load().get(key(s)),
    put(s, summary) {
      const m = load();
      m.delete(key(s));
      m.set(key(s), summary);
      while (m.size > KEEP) m.delete(m.keys().next().value!);
      if (!stateDir) return;
      mkdirSync(stateDir, { recursive: true, mode: 0o700 });
      const file = join(stateDir, FILE);
      writeFileSync(`${file}.tmp`, JSON.stringify({ entries: [...m] }) + '\n', { mode: 0o600 });
      renameSync(`${file}.tmp`, file);
    },
  };
}

function isSummary(v: unknown): v is ReleaseSummary {
  const s = v as ReleaseSummary;
  return !!s && Number.isInteger(s.revision) && typeof s.status === 'string' && typeof s.valuesDigest === 'string' && typeof s.chart?.name === 'string' && typeof s.chart?.version === 'string';
}

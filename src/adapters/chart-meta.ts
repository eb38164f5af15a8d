// Name and version of a local chart (a directory or a packaged .tgz, e.g. a Nix store path),
// read from its Chart.yaml without running helm: a no-op boot must not start a helm process.
//
// The .tgz walk is hand-written: no declared dependency reads tar (tar-stream is only a
// transitive dependency of @kubernetes/client-node, not ours to rely on), and finding one file
// in a ustar archive is a loop over 512-byte headers. It reads what `helm package` writes
// (ustar, with PAX or GNU long names for long paths), the way Helm's own loader does: the
// chart's Chart.yaml is `<top directory>/Chart.yaml`.
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { parse as parseYaml } from 'yaml';
import { FileReadError, readRegularFile } from '../read-file.ts';

export interface ChartMeta {
  name: string;
  version: string;
}

// Helm refuses charts larger than this decompressed (its MaxDecompressedChartSize is 100 MiB).
const MAX_UNPACKED = 100 * 1024 * 1024;
const MAX_CHART_YAML = 1024 * 1024;

export class ChartReadError extends Error {
  override name = 'ChartReadError';
}

function metaFrom(text: string, where: string): ChartMeta {
  let meta: unknown;
  try {
    meta = parseYaml(text);
  } catch (e) {
    throw new ChartReadError(`${where} is not valid YAML (${(e as Error).name}); is this a Helm chart?`);
  }
  const m = meta as { name?: unknown; version?: unknown } | null;
  if (!m || typeof m.name !== 'string' || typeof m.version !== 'string') {
    throw new ChartReadError(`${where} has no name or version; is this a Helm chart?`);
  }
  return { name: m.name, version: m.version };
}

const cstring = (b: Buffer, start: number, len: number) => {
  const s = b.subarray(start, start + len);
  const nul = s.indexOf(0);
  return s.subarray(0, nul < 0 ? s.length : nul).toString('utf8');
};

/** The PAX `path` record, if any ("<len> path=<value>\n" records). */
function paxPath(data: Buffer): string | undefined {
  let i = 0;
  while (i < data.length) {
    const space = data.indexOf(0x20, i);
    if (space < 0) break;
    const len = Number(data.subarray(i, space).toString());
    if (!Number.isInteger(len) || len <= 0) break;
    const rec = data.subarray(space + 1, i + len - 1).toString('utf8');
    if (rec.startsWith('path=')) return rec.slice(5);
    i += len;
  }
  return undefined;
}

/** The top-level Chart.yaml's text from a gzipped tar, or undefined when there is none. */
export function chartYamlFromTgz(tgz: Buffer, where: string): string | undefined {
  let tar: Buffer;
  try {
    tar = gunzipSync(tgz, { maxOutputLength: MAX_UNPACKED });
  } catch (e) {
    throw new ChartReadError(`${where} is not a gzipped chart archive (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  let off = 0;
  let longName: string | undefined;
  while (off + 512 <= tar.length) {
    const h = tar.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break; // end of archive
    const size = parseInt(cstring(h, 124, 12).trim() || '0', 8);
    if (!Number.isFinite(size) || size < 0) throw new ChartReadError(`${where}: corrupt tar header at byte ${off}`);
    const type = String.fromCharCode(h[156] || 0x30);
    const dataStart = off + 512;
    const data = tar.subarray(dataStart, dataStart + size);
    off = dataStart + Math.ceil(size / 512) * 512;
    if (type === 'x') {
      longName = paxPath(data) ?? longName;
      continue;
    }
    if (type === 'L') {
      longName = cstring(data, 0, data.length);
      continue;
    }
    if (type === 'g') continue;
    const prefix = cstring(h, 345, 155);
    const name = longName ?? (prefix ? `${prefix}/${cstring(h, 0, 100)}` : cstring(h, 0, 100));
    longName = undefined;
    if (type !== '0' && type !== '\0') continue;
    const parts = name.replace(/^\.\//, '').split('/');
    if (parts.length === 2 && parts[1] === 'Chart.yaml') {
      if (size > MAX_CHART_YAML) throw new ChartReadError(`${where}: ${name} is larger than ${MAX_CHART_YAML} bytes`);
      return data.toString('utf8');
    }
  }
  return undefined;
}

/** Chart.yaml's name and version of a chart directory or .tgz. */
export function readChartMeta(path: string): ChartMeta {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(path);
  } catch (e) {
    throw new ChartReadError(`chart ${path} cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'}); check the chart.path setting`);
  }
  const isDir = st.isDirectory();
  if (!isDir && (!st.isFile() || st.size > MAX_UNPACKED)) {
    throw new ChartReadError(`chart ${path} is neither a directory nor a chart archive (.tgz) of a sane size; check the chart.path setting`);
  }
  if (isDir) {
    const file = join(path, 'Chart.yaml');
    let text: string;
    try {
      // A FIFO or an endless file in the chart directory must not hang or bloat the run.
      text = readRegularFile(file, MAX_CHART_YAML);
    } catch (e) {
      throw new ChartReadError(`${file} ${e instanceof FileReadError ? e.reason : 'cannot be read'}; is ${path} a Helm chart?`);
    }
    return metaFrom(text, file);
  }
  const text = chartYamlFromTgz(readFileSync(path), path);
  if (text === undefined) throw new ChartReadError(`${path} holds no <chart>/Chart.yaml; is it a packaged Helm chart?`);
  return metaFrom(text, `${path}: Chart.yaml`);
}

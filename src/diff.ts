// A field-level difference between two JSON-like values, for the `diff` of a Change: what a
// human reads in `plan` and in the log. Generic on purpose (Helm values, Kubernetes objects,
// DNS records all use it), so it knows nothing about any of them.
import type { FieldDiff } from './steps/types.ts';

export interface DiffOptions {
  /**
   * Compare only the fields that `to` names (recursively, inside objects): a field present only
   * in `from` is not reported. This is how a desired object is compared with what the server
   * holds, which also carries defaults, status and other writers' fields.
   */
  onlyFieldsOfTo?: boolean;
  /** Paths whose values are replaced by '[redacted]' in the output (compared all the same). */
  redact?: (path: string) => boolean;
}

/** The changes that turn `from` into `to`, leaf by leaf; [] when they are equal. */
export function diffObjects(from: unknown, to: unknown, opts: DiffOptions = {}): FieldDiff[] {
  const out: FieldDiff[] = [];
  walk(from, to, '$', opts, out);
  if (opts.redact) {
    const redact = opts.redact;
    return out.map((d) => (redact(d.path) ? redacted(d) : d));
  }
  return out;
}

/** True when `diffObjects(from, to, opts)` would be empty, without building the list. */
export function sameFields(from: unknown, to: unknown, opts: DiffOptions = {}): boolean {
  return diffObjects(from, to, opts).length === 0;
}

function redacted(d: FieldDiff): FieldDiff {
  const r: FieldDiff = { path: d.path };
  if ('from' in d) r.from = '[redacted]';
  if ('to' in d) r.to = '[redacted]';
  return r;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** `$.a.b`, `$.a[0]`, and `$.labels['app.kubernetes.io/name']` for keys that are not identifiers. */
export function childPath(parent: string, key: string | number): string {
  if (typeof key === 'number') return `${parent}[${key}]`;
  return /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(key) ? `${parent}.${key}` : `${parent}[${JSON.stringify(key).replace(/^"|"$/g, "'")}]`;
}

function walk(from: unknown, to: unknown, path: string, opts: DiffOptions, out: FieldDiff[]): void {
  if (from === undefined && to === undefined) return;
  if (from === undefined) {
    out.push({ path, to });
    return;
  }
  if (to === undefined) {
    out.push({ path, from });
    return;
  }
  if (isPlainObject(from) && isPlainObject(to)) {
    for (const key of Object.keys(to)) walk(from[key], to[key], childPath(path, key), opts, out);
    if (!opts.onlyFieldsOfTo) {
      for (const key of Object.keys(from)) if (!(key in to) && from[key] !== undefined) out.push({ path: childPath(path, key), from: from[key] });
    }
    return;
  }
  if (Array.isArray(from) && Array.isArray(to)) {
    // Element by element: a changed entry in a long list reads as that entry, not the whole list.
    // An element only one side has is always reported, so lists of different length never match;
    // inside elements onlyFieldsOfTo still holds (the server defaults fields in list items too).
    const n = Math.max(from.length, to.length);
    for (let i = 0; i < n; i++) walk(from[i], to[i], childPath(path, i), opts, out);
    return;
  }
  if (!Object.is(from, to)) out.push({ path, from, to });
}

/** Renders diffs as one short line each, for logs: `$.spec.blocks[0].stop: "192.168.0.250" -> "192.168.0.245"`. */
export function formatDiff(diffs: readonly FieldDiff[]): string[] {
  const show = (v: unknown) => {
    const s = JSON.stringify(v);
    return s === undefined ? 'undefined' : s.length > 120 ? `${s.slice(0, 117)}...` : s;
  };
  return diffs.map((d) => ('from' in d && 'to' in d ? `${d.path}: ${show(d.from)} -> ${show(d.to)}` : 'to' in d ? `${d.path}: + ${show(d.to)}` : `${d.path}: - ${show(d.from)}`));
}

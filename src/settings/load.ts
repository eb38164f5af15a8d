import { FileReadError, readRegularFile } from '../read-file.ts';
import { z } from 'zod';
import { settingsSchema, type Settings } from './schema.ts';
import { hostFqdn, ipToInt } from './names.ts';

export class SettingsError extends Error {
  readonly problems: string[];
  constructor(source: string, problems: string[]) {
    super(`${source}: invalid settings:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'SettingsError';
    this.problems = problems;
  }
}

function jsonPath(path: readonly PropertyKey[]): string {
  // A key that is not a plain name (an unknown key may hold dots, spaces, even newlines) is
  // quoted, so the path stays one unambiguous token at the start of one line.
  return path.reduce<string>(
    (acc, k) => (typeof k === 'number' ? `${acc}[${k}]` : /^[A-Za-z_$][\w$-]*$/.test(String(k)) ? `${acc}.${String(k)}` : `${acc}[${JSON.stringify(String(k))}]`),
    '$',
  );
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let cur: unknown = root;
  for (const k of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[k];
  }
  return cur;
}

function show(value: unknown): string {
  if (value === undefined) return 'nothing';
  // JSON.parse turns 1e999 into Infinity, which JSON.stringify would print as null.
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value);
  let s: string | undefined;
  try {
    s = JSON.stringify(value);
  } catch {
    // Nested too deep for the stack: the shape is enough to point at the mistake.
    s = undefined;
  }
  s ??= Array.isArray(value) ? '[...]' : typeof value === 'object' && value !== null ? '{...}' : String(value);
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

function describeIssue(input: unknown, issue: z.core.$ZodIssue): string {
  const path = [...issue.path];
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((k) => `${jsonPath([...path, k])}: unknown field; remove it or check its spelling`).join('\n  - ');
  }
  if (issue.code === 'invalid_union') {
    // Report the branch that got furthest instead of zod's "invalid input".
    const best = [...issue.errors].sort((a, b) => a.length - b.length)[0];
    if (best && best.length > 0) return best.map((i) => describeIssue(input, { ...i, path: [...path, ...i.path] })).join('\n  - ');
  }
  const got = valueAt(input, path);
  const expected = got === undefined && issue.code === 'invalid_type' ? `required: ${issue.message.replace(/, received undefined$/, '')}` : issue.message;
  return `${jsonPath(path)}: got ${show(got)}; ${expected}`;
}

/** Checks that span fields, which a per-field schema cannot express. */
function crossFieldProblems(s: Settings): string[] {
  const problems: string[] = [];
  const { start, stop } = s.network.lbPool;
  const lo = ipToInt(start);
  const hi = ipToInt(stop);
  if (hi < lo) problems.push(`$.network.lbPool: stop ${stop} is below start ${start}; expected start <= stop`);
  const inPool = (ip: string) => ipToInt(ip) >= lo && ipToInt(ip) <= hi;
  if (!inPool(s.network.ingressIP)) {
    problems.push(`$.network.ingressIP: got "${s.network.ingressIP}"; expected an address inside the pool ${start}-${stop}`);
  }
  const seen = new Map<string, number>();
  s.hosts.forEach((h, i) => {
    const at = `$.hosts[${i}]`;
    let name: string;
    try {
      name = hostFqdn(h, s.domain);
    } catch (e) {
      problems.push(`${at}.name: got "${h.name}"; ${(e as Error).message}`);
      return;
    }
    const prev = seen.get(name);
    if (prev !== undefined) {
      problems.push(`${at}.name: "${name}" is already $.hosts[${prev}]; a name gets one record, either external (CNAME) or local (A)`);
    } else seen.set(name, i);
    if (h.access === 'external' && h.ip !== undefined) {
      problems.push(`${at}.ip: got "${h.ip}"; external hosts go through the tunnel and take no ip (use access "local" for an A record)`);
    }
    if (h.access === 'local' && h.service !== undefined) {
      problems.push(`${at}.service: got "${h.service}"; only external hosts have a tunnel service`);
    }
    if (h.ip !== undefined && !inPool(h.ip) && h.ip !== s.network.ingressIP) {
      problems.push(`${at}.ip: got "${h.ip}"; expected an address inside the pool ${start}-${stop} (Cilium announces only those)`);
    }
  });
  if (s.cloudflare?.zone && s.domain !== s.cloudflare.zone && !s.domain.endsWith(`.${s.cloudflare.zone}`)) {
    problems.push(`$.cloudflare.zone: got "${s.cloudflare.zone}"; expected the zone that contains domain "${s.domain}"`);
  }
  if (s.hosts.length > 0 && !s.cloudflare) {
    // Hosts without Cloudflare are still rendered (Ingress cross-checks use them), so this is allowed.
  }
  return problems;
}

export function parseSettings(input: unknown, source = 'settings'): Settings {
  const result = settingsSchema.safeParse(input);
  if (!result.success) throw new SettingsError(source, result.error.issues.map((i) => describeIssue(input, i)));
  const problems = crossFieldProblems(result.data);
  if (problems.length > 0) throw new SettingsError(source, problems);
  return result.data;
}

/** Largest settings file read: a homelab's settings are a few KiB; /dev/zero must not fill memory. */
export const MAX_SETTINGS_BYTES = 1024 * 1024;

/**
 * Where JSON.parse stopped, as "line L, column C". V8 says so for most errors but not for an
 * unexpected token, and its own message quotes the text (which may be a token file passed by
 * mistake), so the position is found here and the message is never passed on.
 */
export function jsonErrorPosition(text: string, v8Message: string): string {
  const m = /line (\d+) column (\d+)/.exec(v8Message);
  if (m) return `line ${m[1]}, column ${m[2]}`;
  const at = /^Unexpected end/.test(v8Message) ? text.length : firstBadOffset(text);
  const before = text.slice(0, at);
  const line = before.split('\n').length;
  return `line ${line}, column ${at - before.lastIndexOf('\n')}`;
}

/** Offset of the first character that cannot continue a JSON text (a minimal recursive descent). */
function firstBadOffset(t: string): number {
  let i = 0;
  const ws = () => {
    while (i < t.length && ' \t\r\n'.includes(t[i]!)) i++;
  };
  const fail = (): never => {
    throw i;
  };
  const lit = (w: string) => (t.startsWith(w, i) ? (i += w.length) : fail());
  const str = () => {
    i++;
    while (i < t.length && t[i] !== '"') {
      if (t.charCodeAt(i) < 0x20) fail();
      i += t[i] === '\\' ? 2 : 1;
    }
    if (i >= t.length) fail();
    i++;
  };
  const value = (): void => {
    ws();
    const c = t[i];
    if (c === '{' || c === '[') {
      const close = c === '{' ? '}' : ']';
      i++;
      ws();
      if (t[i] === close) return void i++;
      for (;;) {
        if (c === '{') {
          ws();
          if (t[i] !== '"') fail();
          str();
          ws();
          if (t[i] !== ':') fail();
          i++;
        }
        value();
        ws();
        if (t[i] === ',') i++;
        else if (t[i] === close) return void i++;
        else fail();
      }
    }
    if (c === '"') return str();
    if (c === 't') return void lit('true');
    if (c === 'f') return void lit('false');
    if (c === 'n') return void lit('null');
    const num = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(t.slice(i));
    if (!num) fail();
    i += num![0].length;
  };
  try {
    value();
    ws();
    if (i < t.length) fail();
  } catch (at) {
    if (typeof at === 'number') return Math.min(at, t.length);
    throw at;
  }
  return t.length;
}

export function loadSettings(file: string): Settings {
  let text: string;
  try {
    text = readRegularFile(file, MAX_SETTINGS_BYTES);
  } catch (e) {
    if (!(e instanceof FileReadError)) throw e;
    throw new SettingsError(file, [`the settings file ${e.reason}; pass a JSON file with --config`]);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    // Position only, never the bytes: a credential passed as --config by mistake must not be printed.
    throw new SettingsError(file, [`not valid JSON at ${jsonErrorPosition(text, (e as Error).message)}; --config takes the JSON settings file`]);
  }
  return parseSettings(json, file);
}

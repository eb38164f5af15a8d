// Settings fuzzing: thousands of broken settings files made by mutating examples/homelab.json
// (and a variant with every optional field set) with a seeded PRNG. Whatever the input, the
// answer must be a list of problems a person can act on: parseSettings throws only
// SettingsError, every problem line starts with the JSON path of a field, and the CLI's
// validate-config exits 65 with those lines and never a stack trace.
//
// HB_FUZZ_SEED and HB_FUZZ_CASES change the run; a failure message names the seed and case.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseSettings, SettingsError } from '../../src/settings/load.ts';
import { main, EXIT } from '../../src/cli.ts';

const SEED = Number(process.env.HB_FUZZ_SEED ?? 0x5eed_2024);
const CASES = Number(process.env.HB_FUZZ_CASES ?? 3000);
const CLI_CASES = 300;

const example = JSON.parse(readFileSync(new URL('../../examples/homelab.json', import.meta.url), 'utf8')) as Json;

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Seg = string | number;

/** mulberry32: small, fast, and the same sequence on every machine for one seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Every optional field set too, so mutations reach the whole schema, chart unions included. */
function fullExample(): Json {
  const s = structuredClone(example) as Record<string, any>;
  s.kubeconfigFile = '/etc/rancher/k3s/k3s.yaml';
  s.network.apiServer = { host: '127.0.0.1', port: 6444 };
  s.cilium = { chart: { repo: 'https://helm.cilium.io', chart: 'cilium', version: '1.18.4' }, values: { hubble: { enabled: true } }, waitForReady: true };
  s.argocd = { chart: { path: '/nix/store/x-argo-cd.tgz' }, values: { server: { replicas: 1 } }, hostname: 'argocd' };
  s.sops = { ageKeyFile: '/var/lib/sops-nix/key.txt' };
  s.gitops.groups = ['infra', 'apps', 'media'];
  s.cloudflare = { ...s.cloudflare, zone: 'peterstorm.io', zoneId: '0123456789abcdef0123456789abcdef', apiBaseUrl: 'https://api.cloudflare.com/client/v4', adopt: false };
  s.hosts.push({ name: 'jellyfin.peterstorm.io', access: 'external', service: 'http://jellyfin.media.svc.cluster.local:8096', adopt: true });
  s.hosts.push({ name: 'nas', access: 'local', ip: '192.168.0.245', ttl: 300 });
  return s as Json;
}

const ODD_KEYS = ['', ' ', 'a.b', 'a\nb', 'a"b', '__proto__', 'constructor', 'toString', 'hasOwnProperty', '$', '[0]', '0', '-1', 'ünïcødé', '🙂', 'x'.repeat(300), 'domian', 'lbpool', 'ingressIp', 'hostName', 'Domain', 'apiTokenfile'];
const ODD_STRINGS = ['', ' ', '\n', '\u0000', '"', '\\', '192.168.0.2400', '192.168.0', '::1', '256.1.1.1', '-', 'a..b', '.', 'http://', 'https://', 'oci://', 'relative/path', '~/keys.txt', 'C:\\keys.txt', '1.18', 'v1.18.4', 'latest', 'EXTERNAL', 'Local', 'true', 'null', '6444', '0x1f', '1e3', '<script>', '${HOME}', '%s%s%n', 'x'.repeat(100_000)];
const ODD_NUMBERS = [0, -0, -1, 1, 1.5, 65535, 65536, 2 ** 31, 2 ** 53 + 1, -(2 ** 53), 1e308, -1e308, 5e-324, Infinity, -Infinity];

class Fuzzer {
  readonly rnd: () => number;
  constructor(seed: number) {
    this.rnd = prng(seed);
  }
  int(n: number): number {
    return Math.floor(this.rnd() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  chance(p: number): boolean {
    return this.rnd() < p;
  }
  randomString(): string {
    const alphabets = ['abcdefghijklmnopqrstuvwxyz', 'ABCXYZ0123456789-._/:', ' \t\n\r"\'\\{}[]$', 'äöü€漢字🙂\u200b\u0007'];
    const a = this.pick(alphabets);
    return Array.from({ length: this.int(this.chance(0.05) ? 5000 : 24) }, () => a[this.int(a.length)]).join('');
  }
  key(): string {
    return this.chance(0.6) ? this.pick(ODD_KEYS) : this.randomString();
  }
  garbage(depth = 0): Json {
    const r = this.int(depth > 3 ? 6 : 10);
    switch (r) {
      case 0:
        return this.pick(ODD_STRINGS);
      case 1:
        return this.randomString();
      case 2:
        return this.pick(ODD_NUMBERS);
      case 3:
        return this.rnd() * 10 ** this.int(40) * (this.chance(0.5) ? -1 : 1);
      case 4:
        return this.chance(0.5);
      case 5:
        return null;
      case 6:
        return Array.from({ length: this.int(4) }, () => this.garbage(depth + 1));
      case 7: {
        const o: Record<string, Json> = {};
        for (let i = this.int(4); i > 0; i--) setOwn(o, this.key(), this.garbage(depth + 1));
        return o;
      }
      case 8: {
        // Deep nesting: a stack-hungry formatter or validator would fall over here.
        let v: Json = this.garbage(4);
        for (let i = this.chance(0.1) ? 20_000 : this.int(40); i > 0; i--) v = this.chance(0.5) ? [v] : { a: v };
        return v;
      }
      default:
        return {};
    }
  }
  /** A near miss of a valid string: the typo kind of mistake. */
  nearMiss(s: string): string {
    switch (this.int(6)) {
      case 0:
        return s + this.pick(['0', '.', ' ', '-', '\n', 'x']);
      case 1:
        return s.slice(0, Math.max(0, s.length - 1 - this.int(3)));
      case 2:
        return s.toUpperCase();
      case 3:
        return ` ${s}`;
      case 4: {
        const i = this.int(s.length + 1);
        return s.slice(0, i) + this.pick(['..', '/', '@', ':', '_', '%']) + s.slice(i);
      }
      default:
        return s.replace(/[0-9]/g, () => String(this.int(400)));
    }
  }
}

/** Own property even for "__proto__", as JSON.parse makes it (plain assignment would set the prototype). */
function setOwn(o: Record<string, Json>, k: string, v: Json): void {
  Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
}

/** Paths of every node down to `maxDepth` (deeper lies only garbage a mutation already put there). */
function allPaths(v: Json, maxDepth = 12): Seg[][] {
  const out: Seg[][] = [];
  const visit = (node: Json, at: Seg[]) => {
    if (node === null || typeof node !== 'object' || at.length >= maxDepth) return;
    for (const [k, child] of Array.isArray(node) ? node.entries() : Object.entries(node)) {
      const p = [...at, k];
      out.push(p);
      visit(child, p);
    }
  };
  visit(v, []);
  return out;
}

function parentOf(root: Json, path: Seg[]): Json | undefined {
  let cur: Json | undefined = root;
  for (const k of path.slice(0, -1)) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<string, Json>)[k as string];
  }
  return cur;
}

/** The same notation as the problem messages (src/settings/load.ts). */
function pathString(path: Seg[]): string {
  return path.reduce<string>((acc, k) => (typeof k === 'number' ? `${acc}[${k}]` : /^[A-Za-z_$][\w$-]*$/.test(k) ? `${acc}.${k}` : `${acc}[${JSON.stringify(k)}]`), '$');
}

class Raw {
  readonly text: string;
  constructor(text: string) {
    this.text = text;
  }
}

/**
 * JSON text of `root` without recursion (the deep-nesting cases overflow JSON.stringify's
 * stack), writing ±Infinity as ±1e999, which is what JSON.parse reads back as ±Infinity.
 */
function serialise(root: Json): string {
  const out: string[] = [];
  const todo: (Json | Raw)[] = [root];
  while (todo.length > 0) {
    const v = todo.pop()!;
    if (v instanceof Raw) out.push(v.text);
    else if (typeof v === 'number') out.push(Number.isFinite(v) ? JSON.stringify(v) : v > 0 ? '1e999' : '-1e999');
    else if (v === null || typeof v !== 'object') out.push(JSON.stringify(v));
    else {
      const entries = Array.isArray(v) ? v.map((x) => [undefined, x] as const) : Object.entries(v);
      const parts: (Json | Raw)[] = [new Raw(Array.isArray(v) ? '[' : '{')];
      entries.forEach(([k, x], i) => {
        if (i > 0) parts.push(new Raw(','));
        if (k !== undefined) parts.push(new Raw(`${JSON.stringify(k)}:`));
        parts.push(x);
      });
      parts.push(new Raw(Array.isArray(v) ? ']' : '}'));
      todo.push(...parts.reverse());
    }
  }
  return out.join('');
}

interface Case {
  input: Json;
  /** Where the mutations happened, in problem-message notation. */
  mutated: string[];
  ops: string[];
  rootReplaced: boolean;
}

function mutate(f: Fuzzer, base: Json): Case {
  let doc = structuredClone(base);
  const mutated: string[] = [];
  const ops: string[] = [];
  let rootReplaced = false;
  for (let n = 1 + (f.chance(0.3) ? f.int(3) : 0); n > 0; n--) {
    if (f.chance(0.01)) {
      doc = f.pick<Json>([null, [], 'settings', 42, true, [structuredClone(base)], f.garbage()]);
      mutated.push('$');
      ops.push('replace root');
      rootReplaced = true;
      continue;
    }
    const paths = allPaths(doc);
    if (paths.length === 0) break;
    const path = f.pick(paths);
    const parent = parentOf(doc, path) as Record<string | number, Json> | Json[] | undefined;
    if (!parent || typeof parent !== 'object') continue;
    const key = path[path.length - 1]!;
    const current = (parent as Record<string | number, Json>)[key]!;
    const op = f.int(8);
    let at = path;
    switch (op) {
      case 0: // delete the field (or the array element)
        if (Array.isArray(parent)) parent.splice(key as number, 1);
        else delete (parent as Record<string, Json>)[key as string];
        ops.push(`delete ${pathString(path)}`);
        break;
      case 1: // wrong type / garbage
        (parent as Record<string | number, Json>)[key] = f.garbage();
        ops.push(`garbage at ${pathString(path)}`);
        break;
      case 2: {
        // unknown key next to the known ones
        const obj = current !== null && typeof current === 'object' && !Array.isArray(current) ? current : (parent as Record<string, Json>);
        const objPath = obj === current ? path : path.slice(0, -1);
        if (Array.isArray(obj)) continue;
        const k = f.key();
        setOwn(obj, k, f.garbage());
        at = [...objPath, k];
        ops.push(`unknown key ${pathString(at)}`);
        break;
      }
      case 3: // an array where an object (or a scalar) belongs, and the other way round
        (parent as Record<string | number, Json>)[key] = Array.isArray(current) ? Object.fromEntries(current.map((v, i) => [String(i), v])) : [current];
        ops.push(`re-shape ${pathString(path)}`);
        break;
      case 4: // near miss of a string, or an odd number
        if (typeof current === 'string') (parent as Record<string | number, Json>)[key] = f.nearMiss(current);
        else (parent as Record<string | number, Json>)[key] = f.pick(ODD_NUMBERS);
        ops.push(`near miss at ${pathString(path)}`);
        break;
      case 5: // the right type, the wrong value
        (parent as Record<string | number, Json>)[key] = typeof current === 'string' ? f.pick(ODD_STRINGS) : typeof current === 'number' ? f.pick(ODD_NUMBERS) : typeof current === 'boolean' ? f.pick<Json>(['true', 1, null]) : Array.isArray(current) ? [] : {};
        ops.push(`odd value at ${pathString(path)}`);
        break;
      case 6: // duplicate an array element (hosts twice, groups twice)
        if (Array.isArray(parent)) parent.push(current); // shared, not cloned: a clone of deep garbage would overflow the stack
        else (parent as Record<string, Json>)[key as string] = [current, current];
        ops.push(`duplicate ${pathString(path)}`);
        break;
      default: // a number or a string as a string of digits
        (parent as Record<string | number, Json>)[key] = typeof current === 'number' ? String(current) : typeof current === 'string' ? Number(current.length) : f.randomString();
        ops.push(`string/number swap at ${pathString(path)}`);
        break;
    }
    mutated.push(pathString(at));
  }
  return { input: doc, mutated, ops, rootReplaced };
}

/** `$`, then fields (`.name`, `[3]`, `["odd key"]`), then `: `. Group 1 is the path. */
const PROBLEM_LINE = /^(\$(?:\.[A-Za-z_$][\w$-]*|\[\d+\]|\["(?:[^"\\]|\\.)*"\])*): \S/;
// Problems about how fields fit together: they name a field other than the one changed.
const CROSS_FIELD = ['$.network.lbPool', '$.network.ingressIP', '$.hosts[', '$.cloudflare.zone'];

const within = (a: string, b: string) => a === b || a.startsWith(`${b}.`) || a.startsWith(`${b}[`);
const related = (a: string, b: string) => within(a, b) || within(b, a);
const parentPath = (p: string) => p.replace(/(\.[A-Za-z_$][\w$-]*|\[\d+\]|\["(?:[^"\\]|\\.)*"\])$/, '');

/** Problem lines of a SettingsError message (after the "<source>: invalid settings:" line). */
function problemLines(message: string): string[] {
  const [, ...rest] = message.split('\n');
  return rest.map((l) => l.replace(/^ {2}- /, ''));
}

function checkProblems(c: Case, lines: string[], where: string): void {
  assert.ok(lines.length > 0, `${where}: a SettingsError without problems`);
  const paths: string[] = [];
  for (const line of lines) {
    const m = PROBLEM_LINE.exec(line);
    assert.ok(m, `${where}: problem line does not start with a JSON path: ${JSON.stringify(line.slice(0, 200))}`);
    assert.doesNotMatch(line, /^\s+at /, `${where}: a stack trace line`);
    paths.push(m[1]!);
  }
  if (!c.rootReplaced) {
    // A root that is still an object has fields to name; "$: invalid input" would name none.
    assert.ok(paths.every((p) => p !== '$'), `${where}: a problem without a field: ${lines.join(' | ')}`);
  }
  // At least one problem points at (or into, or next to, for chart unions) a field that was changed,
  // or is one of the cross-field rules a valid-looking change can break.
  const points = paths.some(
    (p) => CROSS_FIELD.some((x) => p.startsWith(x)) || c.mutated.some((m) => related(p, m) || (parentPath(p) !== '$' && related(parentPath(p), m))),
  );
  assert.ok(points, `${where}: no problem names a changed field (${c.ops.join('; ')}): ${lines.join(' | ')}`);
}

function cases(seed: number, n: number): Case[] {
  const f = new Fuzzer(seed);
  const bases = [example, fullExample()];
  return Array.from({ length: n }, (_, i) => mutate(f, bases[i % 2]!));
}

test('the fuzzing bases are valid settings', () => {
  parseSettings(example);
  parseSettings(fullExample());
});

test(`parseSettings: ${CASES} mutated settings (seed ${SEED}) throw only SettingsError, with a JSON path on every problem line`, () => {
  let invalid = 0;
  const ops = new Map<string, number>();
  for (const [i, c] of cases(SEED, CASES).entries()) {
    const where = `seed ${SEED} case ${i} (${c.ops.join('; ')})`;
    for (const op of c.ops) ops.set(op.split(' ')[0]!, (ops.get(op.split(' ')[0]!) ?? 0) + 1);
    try {
      parseSettings(c.input, 'fuzz');
    } catch (e) {
      if (!(e instanceof SettingsError)) assert.fail(`${where}: threw ${(e as Error)?.constructor?.name}: ${(e as Error)?.stack ?? String(e)}`);
      assert.equal(problemLines(e.message).length, e.problems.flatMap((p) => p.split('\n')).length, `${where}: message and problems disagree`);
      checkProblems(c, problemLines(e.message), where);
      invalid++;
    }
  }
  // Not vacuous: most mutations must break the settings, and every kind of mutation ran.
  assert.ok(invalid > CASES * 0.6, `only ${invalid} of ${CASES} cases were invalid`);
  assert.ok(ops.size >= 8, `mutation kinds seen: ${[...ops.keys()].join(', ')}`);
});

test(`validate-config: ${CLI_CASES} of them through the CLI exit 65 with the same problem lines, never a stack trace`, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'hb-fuzz-'));
  try {
    const all = cases(SEED ^ 0x9e3779b9, CLI_CASES);
    let invalid = 0;
    for (const [i, c] of all.entries()) {
      const where = `seed ${SEED ^ 0x9e3779b9} cli case ${i} (${c.ops.join('; ')})`;
      const file = join(dir, `case-${i}.json`);
      writeFileSync(file, serialise(c.input));
      let out = '';
      let err = '';
      const code = await main(['validate-config', file], { out: (t) => void (out += t), err: (t) => void (err += t) });
      assert.doesNotMatch(err, /\n\s+at .+:\d+:\d+\)?$/m, `${where}: stack trace on stderr`);
      if (code === EXIT.ok) {
        assert.equal(out, `${file}: valid\n`);
        continue;
      }
      invalid++;
      assert.equal(code, EXIT.badSettings, `${where}: exit ${code}: ${err.slice(0, 500)}`);
      const [first] = err.split('\n');
      assert.equal(first, `${file}: invalid settings:`, where);
      checkProblems(c, problemLines(err.trimEnd()), where);
    }
    assert.ok(invalid > CLI_CASES * 0.6, `only ${invalid} of ${CLI_CASES} CLI cases were invalid`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('validate-config: files that are not JSON settings at all exit 65 without a stack trace', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'hb-fuzz-raw-'));
  try {
    const texts: Record<string, string | Buffer> = {
      empty: '',
      whitespace: ' \n\t',
      truncated: JSON.stringify(example).slice(0, 100),
      yaml: 'domain: peterstorm.io\nnetwork: {}\n',
      bom: `\ufeff${JSON.stringify(example)}`,
      binary: Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) % 256)),
      'deep-nesting': `{"domain":${'['.repeat(200_000)}${']'.repeat(200_000)}}`,
      'nix-attrset': '{ domain = "peterstorm.io"; }',
      number: '42',
      'trailing-comma': '{"domain": "peterstorm.io",}',
    };
    for (const [name, text] of Object.entries(texts)) {
      const file = join(dir, `${name}.json`);
      writeFileSync(file, text);
      let err = '';
      const code = await main(['validate-config', file], { out: () => {}, err: (t) => void (err += t) });
      assert.equal(code, EXIT.badSettings, `${name}: exit ${code}: ${err.slice(0, 300)}`);
      assert.ok(err.startsWith(`${file}: invalid settings:`), `${name}: ${err.slice(0, 300)}`);
      assert.doesNotMatch(err, /\n\s+at .+:\d+:\d+\)?$/m, `${name}: stack trace`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// The NixOS module documents exactly the settings the daemon accepts.
//
// nix/settings-options.nix builds the module's typed `settings` options from
// nix/settings-schema.json, a generated copy of the daemon's schema. These tests check that
// the copy is fresh, then evaluate the real Nix code (nix-instantiate, Debian's nix-bin) and
// compare every option it declares with the daemon's schema and with the daemon's parser:
// a field the module would not document, a field it documents that the daemon rejects, a
// required field shown as optional, all fail here. The names both sides share
// (credentials, steps, the lock's exit status) are compared too.
//
// nix-instantiate is required (bash scripts/check-nix.sh installs it); a missing tool fails
// the suite rather than skipping it. The module's firewall and credential decisions
// (nix/host-policy.nix) are evaluated on every run. The evaluation of the whole module with
// nixpkgs' module system needs nixpkgs' `lib`: set NIXPKGS_LIB to a nixpkgs `lib` directory (the
// flake's devShell does); without it that part does not run.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { renderNixSchema, nixSchemaPath, repoRoot } from '../../scripts/gen-nix-schema.ts';
import { settingsJsonSchema } from '../../src/settings/schema.ts';
import { parseSettings, SettingsError } from '../../src/settings/load.ts';
import { CREDENTIAL_NAMES, Credentials } from '../../src/credentials.ts';
import { STEP_NAMES } from '../../src/steps/types.ts';
import { EXIT } from '../../src/cli.ts';

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Schema = { [k: string]: any };

const path = (...p: string[]) => join(repoRoot, ...p);
const example = JSON.parse(readFileSync(path('examples', 'homelab.json'), 'utf8')) as Record<string, Json>;

function nixInstantiate(args: string[]): string {
  try {
    return execFileSync('nix-instantiate', args, { cwd: repoRoot, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === 'ENOENT') {
      throw new Error('nix-instantiate is not installed; run `bash scripts/check-nix.sh` (installs Debian nix-bin) or use `nix develop`');
    }
    throw new Error(`nix-instantiate ${args.join(' ')} failed:\n${err.stderr ?? err.message}`);
  }
}

const evalJson = <T>(file: string, ...extra: string[]): T => JSON.parse(nixInstantiate(['--eval', '--strict', '--json', file, ...extra])) as T;

// ---- what the schema says the module must document ----------------------------------------

type Kind = 'str' | 'int' | 'bool' | 'enum' | 'list' | 'object' | 'json';

interface Expected {
  path: string;
  required: boolean;
  kind: Kind;
  item?: Kind;
  values?: Json[];
  min?: number;
  max?: number;
  description?: string;
  default?: Json;
}

function kindOf(s: Schema): Kind {
  if (s.anyOf || s.oneOf) return 'json';
  if (s.enum) return 'enum';
  if (s.type === 'object') return s.properties ? 'object' : 'json';
  if (s.type === 'array') return 'list';
  if (s.type === 'string') return 'str';
  if (s.type === 'integer') return 'int';
  if (s.type === 'boolean') return 'bool';
  return 'json';
}

/** Every field the daemon accepts, as the module must offer it (list items as `*`). */
export function expectedOptions(schema: Schema, prefix: string[] = []): Expected[] {
  const out: Expected[] = [];
  for (const [name, prop] of Object.entries<Schema>(schema.properties ?? {})) {
    const p = [...prefix, name];
    const kind = kindOf(prop);
    const e: Expected = { path: p.join('.'), required: (schema.required ?? []).includes(name) && !('default' in prop), kind };
    if (kind === 'list') e.item = kindOf(prop.items ?? {});
    if (kind === 'enum') e.values = prop.enum;
    if (kind === 'int' && prop.minimum !== undefined && prop.maximum !== undefined) Object.assign(e, { min: prop.minimum, max: prop.maximum });
    if (prop.description) e.description = prop.description;
    if ('default' in prop) e.default = prop.default;
    out.push(e);
    if (kind === 'object') out.push(...expectedOptions(prop, p));
    if (kind === 'list' && e.item === 'object') out.push(...expectedOptions(prop.items, [...p, '*']));
  }
  return out;
}

// ---- what the Nix code declares ------------------------------------------------------------

interface NixType {
  name: string;
  nullable: boolean;
  item?: NixType;
  values?: Json[];
  min?: number;
  max?: number;
  freeform?: boolean;
}
interface NixOption {
  path: string[];
  type: NixType;
  hasDefault: boolean;
  default: Json;
  defaultText: string | null;
  description: string;
}
interface Dump {
  options: NixOption[];
  contract: {
    credentials: { name: string; setting: string[] }[];
    reconcileCredentials: string[];
    steps: string[];
    reconcileSteps: string[];
    lockedExitStatus: number;
    dnsConflictsExitStatus: number;
    stateDirectory: string;
  };
  cleaned: Record<string, Json>;
}

/** Differences between what the schema requires and what the options declare; [] = in contract. */
export function compareOptions(expected: Expected[], options: NixOption[]): string[] {
  const problems: string[] = [];
  const byPath = new Map(options.map((o) => [o.path.join('.'), o]));
  const wanted = new Set(expected.map((e) => e.path));
  for (const e of expected) {
    const o = byPath.get(e.path);
    if (!o) {
      problems.push(`${e.path}: accepted by the daemon, not declared by the module`);
      continue;
    }
    const at = `settings.${e.path}`;
    if (o.type.name !== e.kind) problems.push(`${at}: module type ${o.type.name}, daemon type ${e.kind}`);
    if (e.required && (o.hasDefault || o.type.nullable)) problems.push(`${at}: required by the daemon, optional in the module`);
    if (!e.required && !(o.hasDefault && o.default === null && o.type.nullable)) {
      problems.push(`${at}: optional in the daemon, so the module must default it to null (the daemon's default applies)`);
    }
    if (e.item && o.type.item?.name !== e.item) problems.push(`${at}: list of ${o.type.item?.name}, daemon expects a list of ${e.item}`);
    if (e.values && JSON.stringify(o.type.values) !== JSON.stringify(e.values)) {
      problems.push(`${at}: enum ${JSON.stringify(o.type.values)}, daemon ${JSON.stringify(e.values)}`);
    }
    if (e.min !== undefined && (o.type.min !== e.min || o.type.max !== e.max)) problems.push(`${at}: range ${o.type.min}-${o.type.max}, daemon ${e.min}-${e.max}`);
    if (e.description && !o.description.includes(e.description)) problems.push(`${at}: description does not carry the daemon's "${e.description}"`);
    if ('default' in e) {
      // defaultText ends with the default as JSON in backticks (Nix sorts the keys).
      const shown = /`([^`]*)`$/.exec(o.defaultText ?? '')?.[1];
      let same = false;
      try {
        same = shown !== undefined && isDeepStrictEqual(JSON.parse(shown), e.default);
      } catch {
        // Not JSON: not the default.
      }
      if (!same) problems.push(`${at}: docs do not show the daemon's default ${JSON.stringify(e.default)} (shown: ${o.defaultText})`);
    }
    if (o.type.name === 'object' && !o.type.freeform) problems.push(`${at}: submodule without freeformType`);
  }
  for (const p of byPath.keys()) if (!wanted.has(p)) problems.push(`settings.${p}: declared by the module, unknown to the daemon`);
  return problems;
}

let dumpCache: Dump | undefined;
const dump = (): Dump => (dumpCache ??= evalJson<Dump>('nix/tests/settings-dump.nix'));

// ---- tests -----------------------------------------------------------------------------------

test('nix/settings-schema.json is the daemon schema, freshly generated', () => {
  const committed = existsSync(nixSchemaPath) ? readFileSync(nixSchemaPath, 'utf8') : '';
  assert.equal(committed, renderNixSchema(), 'nix/settings-schema.json is stale: run `node scripts/gen-nix-schema.ts` and commit it');
});

test('every settings option the module declares is a field the daemon accepts, and vice versa', () => {
  const problems = compareOptions(expectedOptions(settingsJsonSchema()), dump().options);
  assert.deepEqual(problems, []);
});

test('the comparison catches drift (it can fail)', () => {
  const options = dump().options;
  const schema = structuredClone(settingsJsonSchema()) as Schema;
  // A field the daemon gained, one it lost, a field that became required, a changed enum.
  schema.properties.newField = { type: 'string' };
  delete schema.properties.kubeconfigFile;
  schema.properties.network.properties.interfaces = { ...schema.properties.network.properties.interfaces };
  delete schema.properties.network.properties.interfaces.default;
  schema.properties.network.required.push('interfaces');
  schema.properties.hosts.items.properties.access.enum = ['external', 'local', 'tailnet'];
  const problems = compareOptions(expectedOptions(schema), options);
  for (const frag of ['newField: accepted by the daemon', 'settings.kubeconfigFile: declared by the module, unknown', 'network.interfaces: required by the daemon', 'hosts.*.access: enum']) {
    assert.ok(problems.some((p) => p.includes(frag)), `no problem mentions "${frag}" in:\n${problems.join('\n')}`);
  }
});

test("the module's required/optional split matches the daemon's parser", () => {
  // Independent of the JSON Schema: remove each documented field from the valid example
  // and ask the daemon's own parser.
  const present = (obj: unknown, p: string[]): boolean => {
    let cur: any = obj;
    for (const k of p) {
      if (k === '*') cur = Array.isArray(cur) ? cur[0] : undefined;
      else cur = cur && typeof cur === 'object' ? cur[k] : undefined;
      if (cur === undefined) return false;
    }
    return true;
  };
  let checked = 0;
  for (const o of dump().options) {
    if (!present(example, o.path)) continue;
    const copy = structuredClone(example) as any;
    let parent: any = copy;
    for (const k of o.path.slice(0, -1)) parent = k === '*' ? parent[0] : parent[k];
    delete parent[o.path.at(-1)!];
    let accepted = true;
    try {
      parseSettings(copy);
    } catch (e) {
      if (!(e instanceof SettingsError)) throw e;
      accepted = false;
    }
    const optionalInModule = o.hasDefault;
    assert.equal(accepted, optionalInModule, `settings.${o.path.join('.')}: the module says ${optionalInModule ? 'optional' : 'required'}, the daemon ${accepted ? 'accepts' : 'rejects'} settings without it`);
    checked++;
  }
  assert.ok(checked >= 15, `only ${checked} fields of examples/homelab.json were checked`);
});

test('clean drops unset options and module internals, keeps freeform values verbatim', () => {
  assert.deepEqual(dump().cleaned, {
    domain: 'example.org',
    kubeconfigFile: '/etc/rancher/k3s/k3s.yaml',
    cilium: { chart: { path: '/nix/store/x-cilium.tgz' }, values: { hubble: { enabled: null } } },
    hosts: [{ name: 'sonarr', access: 'local' }],
    futureField: { keep: null },
  });
});

/** Settings fields the daemon's schema marks as credentials ("Credential: …"), as paths. */
export function credentialFields(schema: Schema, prefix: string[] = []): string[] {
  return Object.entries<Schema>(schema.properties ?? {}).flatMap(([name, prop]) => {
    const p = [...prefix, name];
    if (typeof prop.description === 'string' && prop.description.startsWith('Credential:')) return [p.join('.')];
    return prop.type === 'object' ? credentialFields(prop, p) : [];
  });
}

test('credentials, steps and exit statuses are the names the daemon uses', () => {
  const { contract } = dump();
  // The module passes exactly the schema's credential fields, each under one name.
  assert.deepEqual(contract.credentials.map((c) => c.setting.join('.')).sort(), credentialFields(settingsJsonSchema()).sort(), 'credential settings fields');
  assert.equal(new Set(contract.credentials.map((c) => c.name)).size, contract.credentials.length, 'credential names are unique');
  // Every credential the daemon looks up in $CREDENTIALS_DIRECTORY is delivered, from the field it names.
  const creds = new Credentials(parseSettings(example), undefined);
  for (const name of CREDENTIAL_NAMES) {
    const c = contract.credentials.find((x) => x.name === name);
    assert.ok(c, `the daemon reads credential ${name}; nix/contract.nix does not pass it`);
    assert.equal(`$.${c.setting.join('.')}`, creds.field(name), `settings field of credential ${name}`);
  }
  for (const c of contract.credentials) {
    const opt = dump().options.find((o) => o.path.join('.') === c.setting.join('.'));
    assert.ok(opt, `settings.${c.setting.join('.')} is not a module option`);
  }
  for (const n of contract.reconcileCredentials) assert.ok(contract.credentials.some((c) => c.name === n), `reconcile credential ${n} is not a credential`);
  assert.deepEqual(contract.steps, [...STEP_NAMES], 'step names');
  for (const s of contract.reconcileSteps) assert.ok((STEP_NAMES as readonly string[]).includes(s), `reconcile step ${s} is not a daemon step`);
  assert.equal(contract.lockedExitStatus, EXIT.locked, 'exit status of a run that finds the lock held');
  // The exit status for "converged except reported DNS conflicts" is the daemon's, once it has
  // one; until then no other outcome may use the number the reconcile unit counts as success.
  const exits = EXIT as Record<string, number>;
  const conflicts = Object.keys(exits).find((k) => /conflict/i.test(k));
  if (conflicts) assert.equal(contract.dnsConflictsExitStatus, exits[conflicts], `nix/contract.nix dnsConflictsExitStatus vs EXIT.${conflicts}`);
  else assert.ok(!Object.values(exits).includes(contract.dnsConflictsExitStatus), `exit status ${contract.dnsConflictsExitStatus} means something else to the daemon`);
});

test("the package's source fileset names files that exist (CI's Nix 2.8 cannot evaluate lib.fileset)", () => {
  // lib.fileset needs builtins.readFileType (Nix 2.14); a renamed or deleted file would only
  // fail `nix build`, which CI cannot run. What the build script reads must be in it too.
  const nix = readFileSync(path('nix', 'package.nix'), 'utf8');
  const block = /fileset = lib\.fileset\.unions \[([\s\S]*?)\];/.exec(nix)?.[1];
  assert.ok(block, 'nix/package.nix has no `fileset = lib.fileset.unions [ … ]`');
  const entries = [...block.matchAll(/(\(lib\.fileset\.maybeMissing )?\.\.\/([A-Za-z0-9._/-]+)/g)].map((m) => ({ file: m[2]!, optional: !!m[1] }));
  assert.ok(entries.length >= 5, `only ${entries.length} fileset entries found`);
  for (const e of entries) if (!e.optional) assert.ok(existsSync(path(e.file)), `nix/package.nix's fileset names ../${e.file}, which does not exist`);
  const files = new Set(entries.map((e) => e.file));
  const pkg = JSON.parse(readFileSync(path('package.json'), 'utf8')) as { scripts: Record<string, string> };
  assert.match(nix, /npmBuildScript = "build";/);
  const script = /^node (\S+)$/.exec(pkg.scripts.build ?? '')?.[1];
  assert.ok(script, `package.json's build script is \`${pkg.scripts.build}\`, expected \`node <script>\``);
  for (const f of [script, 'src', 'package.json', 'package-lock.json', 'tsconfig.json']) {
    assert.ok(files.has(f), `the build reads ${f}, which the package's fileset leaves out`);
  }
});

const nixBlocks = (): string[] => [...readFileSync(path('docs', 'nixos.md'), 'utf8').matchAll(/```nix\n([\s\S]*?)```/g)].map((m) => m[1]!);
/** The configuration.nix of the quick start. */
const quickStart = (): string => {
  const config = nixBlocks().find((b) => b.includes('services.homelab-bootstrap = {') && b.includes('hosts = ['));
  assert.ok(config, 'docs/nixos.md has no ```nix block configuring services.homelab-bootstrap');
  return config;
};

function nixpkgsLib(): string | undefined {
  const candidates = [process.env.NIXPKGS_LIB];
  try {
    candidates.push(join(execFileSync('nix-instantiate', ['--find-file', 'nixpkgs'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim(), 'lib'));
  } catch {
    // No <nixpkgs> on NIX_PATH.
  }
  return candidates.find((c): c is string => !!c && existsSync(join(c, 'default.nix')));
}

interface Details {
  k3sExtraFlags: string | string[];
  k3sDropIns: Record<string, string>;
  k3sRestartTriggers: string[];
  firewall: { checkReversePath: Json; allowedTCPPorts: number[]; allowedUDPPorts: number[]; extraCommands: string; extraInputRules: string };
  kernelModules: string[];
  blacklistedKernelModules: string[];
  mainCredentials: string[];
  reconcileCredentials: string[] | null;
  settingsJSON: string;
}
interface Scenario {
  evaluates: boolean;
  failed: string[];
  warnings: string[];
  details: Details | null;
}
interface ModuleReport {
  homelab: {
    failed: string[];
    warnings: string[];
    settingsJSON: string;
    k3sDropIns: Record<string, string>;
    k3sRestartTriggers: string[];
    kernelModules: string[];
    blacklistedKernelModules: string[];
    unit: Record<string, Json> & { LoadCredential: string[]; after: string[]; wants: string[] };
    reconcile: { Type: string; ExecStart: string; SuccessExitStatus: number[]; LoadCredential: string[]; after: string[]; restartIfChanged: boolean; timer: Record<string, string> };
    k3s: { enable: boolean; role: string; extraFlags: string | string[]; disable: string[] };
    firewall: { enable: boolean; checkReversePath: Json; allowedTCPPorts: number[]; allowedUDPPorts: number[]; extraCommands: string; extraInputRules: string };
  };
  sops: { ageKeyFile: string; after: string[]; LoadCredential: string[] };
  orderingWithoutUnitNames: { evaluates: boolean; after: string[] | null };
  docs: { failed: string[]; warnings: string[]; settingsJSON: string; LoadCredential: string[] } | null;
  scenarios: Record<string, Scenario>;
}

const libDir = nixpkgsLib();

const names = (loadCredential: readonly string[] | null): string[] => (loadCredential ?? []).map((c) => c.split(':')[0]!).sort();
/** The flags k3s reads from a drop-in, parsed (the module writes JSON, which is YAML). */
const dropIn = (files: Record<string, string>, dir = 'rancher/k3s/config.yaml.d'): Record<string, Json> => {
  const text = files[`${dir}/50-homelab-bootstrap.yaml`];
  assert.ok(text, `no drop-in in ${dir}: ${JSON.stringify(Object.keys(files))}`);
  return JSON.parse(text) as Record<string, Json>;
};
const CILIUM_K3S_FLAGS = { 'flannel-backend': 'none', 'disable-network-policy': true, 'disable-kube-proxy': true, 'default-local-storage-path': '/var/data/configs' };
/** The host ports only pods may reach: API, kubelet, cilium-health, Hubble, node-exporter, metrics. */
const POD_ONLY_PORTS = [6443, 10250, 4240, 4244, 9100, 9962, 9963, 9964, 9965];
const LEGACY_IPTABLES_MODULES = ['ip_tables', 'ip6_tables', 'iptable_filter', 'iptable_nat', 'iptable_mangle', 'iptable_raw'];
const portsIn = (rule: string): number[] => (/(?:--dports |dport \{ )([\d, ]+)/.exec(rule)?.[1] ?? '').split(/[ ,]+/).filter(Boolean).map(Number).sort((a, b) => a - b);
const sorted = (xs: readonly number[]): number[] => [...xs].sort((a, b) => a - b);

interface FirewallPolicy {
  lanTCPPorts: number[];
  lanUDPPorts: number[];
  podTCPPorts: number[];
  iptablesRules: string;
  nftablesRules: string;
}
interface HostPolicy {
  defaults: { openFirewall: boolean; apiFromLAN: boolean; multiNode: boolean };
  firewall: Record<'default' | 'apiFromLAN' | 'multiNode' | 'dualStack', FirewallPolicy>;
  credentials: { main: string[]; reconcile: string[] };
  credentialsWithoutOptional: { main: string[]; reconcile: string[] };
}

// Runs everywhere, CI included: the functions module.nix takes its firewall and LoadCredential=
// values from, with the defaults its options declare. (How the module wires them into
// networking.firewall and the units is the nixpkgs-lib test below and the flake's checks.)
test('firewall and credentials: LAN gets only the Ingress, the pod network the metrics, the reconcile unit no age key', () => {
  const p = evalJson<HostPolicy>('nix/tests/host-policy-dump.nix');
  assert.deepEqual(p.defaults, { openFirewall: true, apiFromLAN: false, multiNode: false });
  const fw = p.firewall.default;
  assert.deepEqual(sorted(fw.lanTCPPorts), [80, 443]);
  assert.deepEqual(fw.lanUDPPorts, []);
  assert.deepEqual(sorted(fw.podTCPPorts), sorted(POD_ONLY_PORTS));
  // Each backend's rules accept those ports from the pod network only, one rule per CIDR.
  assert.match(fw.iptablesRules, /^iptables -A nixos-fw -s 10\.42\.0\.0\/16 -p tcp -m multiport --dports \S+ -j nixos-fw-accept\n$/);
  assert.match(fw.nftablesRules, /^ip saddr 10\.42\.0\.0\/16 tcp dport \{ [\d, ]+ \} accept\n$/);
  assert.deepEqual(portsIn(fw.iptablesRules), sorted(POD_ONLY_PORTS));
  assert.deepEqual(portsIn(fw.nftablesRules), sorted(POD_ONLY_PORTS));
  assert.match(p.firewall.dualStack.iptablesRules, /^ip6tables -A nixos-fw -s fd42::\/56 /m);
  assert.match(p.firewall.dualStack.nftablesRules, /^ip6 saddr fd42::\/56 /m);
  // The opt-ins add what they say; the metrics, Hubble and node-exporter ports never reach the LAN.
  assert.deepEqual(sorted(p.firewall.apiFromLAN.lanTCPPorts), [80, 443, 6443]);
  assert.deepEqual(sorted(p.firewall.multiNode.lanTCPPorts), [80, 443, 4240, 6443, 10250]);
  assert.deepEqual(p.firewall.multiNode.lanUDPPorts, [8472]);
  for (const [variant, f] of Object.entries(p.firewall)) {
    for (const port of [4244, 9100, 9962, 9963, 9964, 9965]) assert.ok(!f.lanTCPPorts.includes(port), `${variant}: TCP ${port} open to the LAN`);
  }
  // The main unit gets every credential that is set; the reconcile unit (tunnel + DNS) only the
  // kubeconfig and the Cloudflare token: never the age key or the git credential.
  assert.deepEqual(names(p.credentials.main), ['age-key', 'cloudflare-api-token', 'git-repo-credential', 'kubeconfig']);
  assert.ok(p.credentials.main.includes('age-key:/var/lib/sops-nix/keys.txt'));
  assert.deepEqual(names(p.credentials.reconcile), ['cloudflare-api-token', 'kubeconfig']);
  assert.deepEqual(names(p.credentialsWithoutOptional.main), ['age-key', 'kubeconfig']);
  assert.deepEqual(names(p.credentialsWithoutOptional.reconcile), ['kubeconfig']);
});

// Needs nixpkgs' lib, which only a Nix machine has (README: "What is checked where"); CI cannot
// download it, so there the test is not registered at all rather than reported as skipped.
if (libDir) test(
  'the module evaluates with nixpkgs’ module system: units, k3s flags, firewall, credentials, assertions',
  () => {
    // The quick start of docs/nixos.md is evaluated too, not only parsed.
    const dir = mkdtempSync(join(tmpdir(), 'hb-docs-'));
    const docsConfig = join(dir, 'configuration.nix');
    writeFileSync(docsConfig, quickStart());
    let r: ModuleReport;
    try {
      r = evalJson<ModuleReport>('nix/tests/module-eval.nix', '--arg', 'lib', `import ${libDir}`, '--arg', 'docsConfig', docsConfig);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const h = r.homelab;
    const { contract } = dump();
    assert.deepEqual(h.failed, []);
    assert.deepEqual(h.warnings, []);

    // SPEC.md's homelab written in Nix is examples/homelab.json to the daemon.
    assert.deepEqual(parseSettings(JSON.parse(h.settingsJSON)), parseSettings(example));

    assert.equal(h.unit.Type, 'exec');
    assert.equal(h.unit.RemainAfterExit, true);
    assert.equal(h.unit.Restart, 'on-failure');
    assert.equal(h.unit.restartIfChanged, true);
    assert.equal(h.unit.DynamicUser, true);
    assert.ok(h.unit.after.includes('k3s.service') && h.unit.wants.includes('k3s.service'));
    assert.match(String(h.unit.ExecStart), / apply --config \S+$/);

    // Each unit gets the credentials its steps read: the main unit all that are set, the
    // reconcile (tunnel + DNS) the kubeconfig and the Cloudflare token, never the age key.
    assert.deepEqual(names(h.unit.LoadCredential), ['age-key', 'cloudflare-api-token', 'kubeconfig']);
    assert.ok(h.unit.LoadCredential.includes('kubeconfig:/etc/rancher/k3s/k3s.yaml'));
    assert.deepEqual(names(h.reconcile.LoadCredential), [...contract.reconcileCredentials].sort());
    assert.deepEqual(names(h.reconcile.LoadCredential), ['cloudflare-api-token', 'kubeconfig']);

    assert.equal(h.reconcile.Type, 'oneshot');
    assert.equal(h.reconcile.restartIfChanged, false);
    assert.match(h.reconcile.ExecStart, / --only tunnel --only dns$/);
    assert.deepEqual(h.reconcile.SuccessExitStatus, [EXIT.locked, contract.dnsConflictsExitStatus]);
    // A standing DNS conflict is reported, not retried: retrying would change nothing.
    assert.deepEqual(h.unit.SuccessExitStatus, [EXIT.conflicts]);
    assert.equal(h.reconcile.timer.OnUnitInactiveSec, '15min');

    // Cilium's k3s flags live in a config drop-in, so extraFlags stays the user's alone.
    assert.deepEqual(dropIn(h.k3sDropIns), CILIUM_K3S_FLAGS);
    assert.deepEqual(h.k3s.extraFlags, []);
    // A changed /etc file restarts no unit, so the drop-in's content is a restart trigger of k3s.
    assert.deepEqual(h.k3sRestartTriggers, [h.k3sDropIns['rancher/k3s/config.yaml.d/50-homelab-bootstrap.yaml']]);
    assert.ok(h.k3s.disable.includes('servicelb') && h.k3s.disable.includes('traefik'));

    // Firewall: from the LAN only the Ingress; the API, kubelet, Hubble and metrics ports
    // (node-exporter's 9100 included) from the pod network only.
    assert.equal(h.firewall.enable, true);
    assert.equal(h.firewall.checkReversePath, 'loose');
    assert.deepEqual(sorted(h.firewall.allowedTCPPorts), [80, 443]);
    assert.deepEqual(h.firewall.allowedUDPPorts, []);
    assert.match(h.firewall.extraCommands, /^iptables -A nixos-fw -s 10\.42\.0\.0\/16 -p tcp -m multiport --dports \S+ -j nixos-fw-accept$/m);
    assert.deepEqual(portsIn(h.firewall.extraCommands), sorted(POD_ONLY_PORTS));
    assert.equal(h.firewall.extraInputRules, '');
    // iptables backend: the legacy tables Cilium's iptables-legacy mode uses, and xt_socket.
    for (const m of [...LEGACY_IPTABLES_MODULES, 'xt_socket']) assert.ok(h.kernelModules.includes(m), m);

    // docs/nixos.md's configuration.nix evaluates to SPEC.md's homelab as well.
    assert.ok(r.docs, 'no docs report');
    assert.deepEqual(r.docs.failed, []);
    assert.deepEqual(r.docs.warnings, []);
    assert.deepEqual(parseSettings(JSON.parse(r.docs.settingsJSON)), parseSettings(example));
    assert.ok(r.docs.LoadCredential.includes('age-key:/var/lib/sops-nix/keys.txt'));

    // With sops-nix imported, its key and its unit are used.
    assert.equal(r.sops.ageKeyFile, '/var/lib/sops-nix/key.txt');
    assert.ok(r.sops.after.includes('sops-install-secrets.service'));
    assert.ok(r.sops.LoadCredential.includes('age-key:/var/lib/sops-nix/key.txt'));
    // Ordered after sops-nix's unit without asking which units exist (that question forces
    // every systemd.services definition; here one throws if forced).
    assert.equal(r.orderingWithoutUnitNames.evaluates, true);
    assert.ok(r.orderingWithoutUnitNames.after?.includes('sops-install-secrets.service'));

    // Each contradiction stops evaluation with its message; each control evaluates cleanly and
    // produces what `check` says.
    type Want = RegExp | 'eval-error' | { warning: RegExp } | { ok: (d: Details) => void };
    const ok = (check: (d: Details) => void = () => {}): Want => ({ ok: check });
    const expected: Record<string, Want> = {
      flannelReEnabled: /--flannel-backend=vxlan/,
      flannelAsTwoWords: /--flannel-backend=host-gw/,
      flannelInAString: /--flannel-backend=vxlan/,
      kubeProxyReEnabled: /re-enables kube-proxy/,
      kubeProxyConfigured: /kube-proxy is disabled/,
      networkPolicyReEnabled: /network policy/,
      worldReadableKubeconfig: /--write-kubeconfig-mode=644.*root-only/,
      strictReversePath: /checkReversePath is strict/,
      agentRole: /k3s server/,
      firewalld: /openFirewall supports the iptables and nftables firewalls, not firewalld/,
      chartTwice: /either charts\.cilium or settings\.cilium\.chart/,
      cloudflareWithoutToken: /cloudflare\.apiTokenFile/,
      // sops-nix with SSH host keys only: say what to set instead of using a missing file.
      sopsSSHKeysOnly: /sops\.age\.keyFile = null[\s\S]*Set services\.homelab-bootstrap\.ageKeyFile[\s\S]*or set sops\.age\.keyFile/,
      // A string cannot take the module's list of flags; the message names the remedy.
      stringFlagsWithStoreConfig: /extraFlags is a string[\s\S]*Write services\.k3s\.extraFlags as a list/,
      // A path literal is copied into the store by nixpkgs' `--config ${configPath}`.
      stringFlagsWithPathLiteralConfig: /path literal \/etc\/k3s\/server\.yaml, which nixpkgs' k3s module copies into the Nix store[\s\S]*in quotes: "\/etc\/k3s\/server\.yaml"/,
      keyInStore: 'eval-error',
      keyAsPathLiteral: 'eval-error',
      conflictingCredentialPath: 'eval-error',
      missingDomain: 'eval-error',
      // Steps outside tunnel/dns would need credentials the reconcile unit does not hold.
      reconcileAllSteps: 'eval-error',
      firewallOff: { warning: /networking\.firewall\.enable is false/ },
      // A flush on every nftables reload would delete Cilium's and the kubelet's rules.
      nftablesFlushingRuleset: { warning: /networking\.nftables\.flushRuleset = false/ },
      harmlessExtraFlags: ok(),
      // The NixOS wiki's string form works: it stays the user's, the drop-in carries ours, and
      // its --cluster-cidr is the pod network the firewall trusts.
      stringExtraFlags: ok((d) => {
        assert.equal(d.k3sExtraFlags, '--node-ip=192.168.0.10 --cluster-cidr=10.50.0.0/16');
        assert.deepEqual(dropIn(d.k3sDropIns), CILIUM_K3S_FLAGS);
        assert.match(d.firewall.extraCommands, /-s 10\.50\.0\.0\/16 /);
        assert.doesNotMatch(d.firewall.extraCommands, /10\.42\./);
      }),
      // A config file in the store: k3s reads no drop-in beside it, so the flags go on the command line.
      listWithStoreConfig: ok((d) => {
        assert.deepEqual(d.k3sDropIns, {});
        // Flags on the command line change ExecStart, which restarts k3s by itself.
        assert.deepEqual(d.k3sRestartTriggers, []);
        for (const f of ['--flannel-backend=none', '--disable-network-policy', '--disable-kube-proxy', '--node-ip=192.168.0.10']) {
          assert.ok((d.k3sExtraFlags as string[]).includes(f), f);
        }
      }),
      // A config file under /etc: the drop-in goes into its .d directory, which k3s reads.
      configUnderEtc: ok((d) => {
        assert.deepEqual(dropIn(d.k3sDropIns, 'k3s/server.yaml.d'), CILIUM_K3S_FLAGS);
        assert.deepEqual(d.k3sRestartTriggers, [d.k3sDropIns['k3s/server.yaml.d/50-homelab-bootstrap.yaml']]);
      }),
      // Another localStoragePath is another drop-in, and so another restart trigger.
      otherLocalStoragePath: ok((d) => {
        assert.equal(dropIn(d.k3sDropIns)['default-local-storage-path'], '/srv/k3s-volumes');
        assert.equal(d.k3sRestartTriggers.length, 1);
        assert.equal((JSON.parse(d.k3sRestartTriggers[0]!) as Record<string, Json>)['default-local-storage-path'], '/srv/k3s-volumes');
      }),
      // /etc/k3s/server.yaml unquoted: k3s reads the store copy, so no drop-in can reach it.
      configAsPathLiteral: ok((d) => {
        assert.deepEqual(d.k3sDropIns, {});
        assert.deepEqual(d.k3sRestartTriggers, []);
        for (const f of ['--flannel-backend=none', '--disable-network-policy', '--disable-kube-proxy', '--node-ip=192.168.0.10']) {
          assert.ok((d.k3sExtraFlags as string[]).includes(f), f);
        }
      }),
      sopsSSHKeysWithAgeKey: ok((d) => assert.ok(d.mainCredentials.includes('age-key:/run/secrets/gitops-age-key'))),
      // firewall-iptables.nix sets `mkDefault false` where the kernel lacks rpfilter; that wins.
      kernelWithoutRPFilter: ok((d) => assert.equal(d.firewall.checkReversePath, false)),
      // nftables: the same ports as nftables rules, no legacy ip_tables modules (blacklisted there).
      nftables: ok((d) => {
        assert.equal(d.firewall.extraCommands, '');
        assert.match(d.firewall.extraInputRules, /^ip saddr 10\.42\.0\.0\/16 tcp dport \{ [\d, ]+ \} accept$/m);
        assert.deepEqual(portsIn(d.firewall.extraInputRules), sorted(POD_ONLY_PORTS));
        assert.deepEqual(sorted(d.firewall.allowedTCPPorts), [80, 443]);
        for (const m of LEGACY_IPTABLES_MODULES) assert.ok(!d.kernelModules.includes(m), `${m} is loaded with nftables`);
        assert.deepEqual(d.kernelModules.filter((m) => d.blacklistedKernelModules.includes(m)), []);
        for (const m of ['nf_tables', 'nft_compat', 'xt_socket']) assert.ok(d.kernelModules.includes(m), m);
      }),
      multiNode: ok((d) => {
        assert.deepEqual(sorted(d.firewall.allowedTCPPorts), [80, 443, 4240, 6443, 10250]);
        assert.deepEqual(d.firewall.allowedUDPPorts, [8472]);
        for (const p of [4244, 9100, 9962, 9963, 9964, 9965]) assert.ok(!d.firewall.allowedTCPPorts.includes(p), `${p} open to the LAN`);
      }),
      apiFromLAN: ok((d) => assert.deepEqual(sorted(d.firewall.allowedTCPPorts), [80, 443, 6443])),
      // The private repository's credential reaches the main unit only, by path.
      privateRepository: ok((d) => {
        assert.ok(d.mainCredentials.includes('git-repo-credential:/run/secrets/gitops-repo-token'));
        assert.deepEqual(names(d.reconcileCredentials), ['cloudflare-api-token', 'kubeconfig']);
        const gitops = (JSON.parse(d.settingsJSON) as { gitops: Record<string, Json> }).gitops;
        assert.equal(gitops.repoCredentialFile, '/run/secrets/gitops-repo-token');
        assert.equal(gitops.repoUsername, 'peterstorm');
      }),
      chartFromNix: ok(),
      k3sManagedElsewhere: ok((d) => {
        assert.deepEqual(d.k3sDropIns, {});
        assert.deepEqual(d.firewall.allowedTCPPorts, []);
      }),
    };
    assert.deepEqual(Object.keys(r.scenarios).sort(), Object.keys(expected).sort(), 'every scenario has an expectation');
    for (const [name, want] of Object.entries(expected)) {
      const got = r.scenarios[name]!;
      const shown = `${name}: ${JSON.stringify({ ...got, details: undefined })}`;
      if (want === 'eval-error') assert.equal(got.evaluates, false, shown);
      else if ('warning' in want) assert.ok(got.evaluates && got.failed.length === 0 && got.warnings.length === 1 && want.warning.test(got.warnings[0]!), shown);
      else if (want instanceof RegExp) assert.ok(got.evaluates && got.failed.length === 1 && want.test(got.failed[0]!), shown);
      else {
        assert.ok(got.evaluates && got.failed.length === 0 && got.warnings.length === 0 && got.details, shown);
        want.ok(got.details);
      }
    }
  },
);

test('docs/nixos.md: the configuration.nix quick start parses and is SPEC.md’s homelab', () => {
  const doc = readFileSync(path('docs', 'nixos.md'), 'utf8');
  const blocks = nixBlocks();
  assert.ok(blocks.some((b) => b.includes('homelab-bootstrap.nixosModules.default')), 'no ```nix block imports the module');
  const config = quickStart();
  const dir = mkdtempSync(join(tmpdir(), 'hb-docs-'));
  try {
    blocks.forEach((b, i) => {
      const f = join(dir, `block-${i}.nix`);
      writeFileSync(f, b);
      nixInstantiate(['--parse', f]);
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const hosts = (example.hosts as { name: string; ip?: string }[]) ?? [];
  for (const h of hosts) assert.ok(config.includes(`"${h.name}"`), `the quick start lacks host ${h.name}`);
  for (const v of ['192.168.0.240', '192.168.0.250', '192.168.0.241', 'peterstorm.io', 'flannel', 'sops.age.keyFile', 'cloudflare.apiTokenFile']) {
    assert.ok(doc.includes(v), `docs/nixos.md does not mention ${v}`);
  }
  // Its firewall table says, per port the module opens, who needs it.
  const firewall = /\n## Firewall\n([\s\S]*?)\n## /.exec(doc)?.[1] ?? '';
  const rows = firewall.split('\n').filter((l) => /^\| (TCP|UDP) /.test(l));
  for (const port of [80, 443, ...POD_ONLY_PORTS]) {
    assert.ok(rows.some((r) => new RegExp(`^\\| TCP [^|]*\\b${port}\\b[^|]*\\|[^|]+\\|\\s*\\S`).test(r)), `docs/nixos.md's firewall table has no row saying who needs TCP ${port}`);
  }
  assert.match(firewall, /UDP 8472/);
});

// What check-repo checks, as pure functions over the tree it read: the sops creation rules, the
// recipients each encrypted file names in its own metadata, the ksops generators, and that the
// tree's Ingress hosts and the settings' hosts table agree. No decryption here (sops.ts does it).
import { parse } from 'yaml';
import { posix } from 'node:path';
import type { Settings } from '../settings/schema.ts';
import { DEFAULTS } from '../settings/schema.ts';
import { fqdn } from '../settings/names.ts';
import { EXAMPLE_AGE_RECIPIENT } from '../gitops/example-key.ts';
import type { Tree, TreeDoc } from './tree.ts';

export interface Problem {
  /** The file it is about, relative to the repository (or the settings file). */
  file: string;
  /** What is wrong and what to do. Never a secret value or key material. */
  message: string;
}

export interface SopsRule {
  index: number;
  pathRegex: string | undefined;
  recipients: string[];
}

export interface SopsConfig {
  /** Relative to the repository root. */
  file: string;
  rules: SopsRule[];
}

const LB_IP_ANNOTATIONS = ['lbipam.cilium.io/ips', 'io.cilium/lb-ipam-ips'];
const EXAMPLE_NOTE = `the shipped example key ${EXAMPLE_AGE_RECIPIENT}, whose private half is public in this project's test fixtures`;

const splitRecipients = (v: unknown): string[] =>
  (Array.isArray(v) ? v.map(String) : typeof v === 'string' ? v.split(',') : []).map((s) => s.trim()).filter(Boolean);

/** Parses `.sops.yaml` (YAML anchors resolved): each creation rule's path_regex and age recipients. */
export function parseSopsConfig(text: string, file: string): SopsConfig | Problem {
  let conf: unknown;
  try {
    conf = parse(text, { maxAliasCount: 100 });
  } catch (e) {
    const line = (e as { linePos?: { line: number }[] }).linePos?.[0]?.line;
    return { file, message: `not valid YAML${line ? ` (line ${line})` : ''}; sops cannot read it` };
  }
  const rules = (conf as { creation_rules?: unknown } | null)?.creation_rules;
  if (!Array.isArray(rules) || rules.length === 0) return { file, message: 'has no creation_rules; add one whose path_regex matches the encrypted files and whose age recipients include the host key' };
  return {
    file,
    rules: rules.map((r: Record<string, unknown>, index) => ({
      index,
      pathRegex: typeof r?.path_regex === 'string' ? r.path_regex : undefined,
      recipients: [
        ...splitRecipients(r?.age),
        ...(Array.isArray(r?.key_groups) ? (r.key_groups as Record<string, unknown>[]).flatMap((g) => splitRecipients(g?.age)) : []),
      ],
    })),
  };
}

/** The rule sops uses for `path` (relative to the directory of .sops.yaml): the first that matches. */
export function ruleFor(config: SopsConfig, path: string): SopsRule | undefined {
  return config.rules.find((r) => {
    if (r.pathRegex === undefined || r.pathRegex === '') return true;
    try {
      return new RegExp(r.pathRegex).test(path);
    } catch {
      return false;
    }
  });
}

/** The age recipients an encrypted file names in its own `sops` metadata (public keys only). */
export function fileRecipients(text: string): string[] | undefined {
  let doc: unknown;
  try {
    doc = parse(text);
  } catch {
    return undefined;
  }
  const age = (doc as { sops?: { age?: { recipient?: string }[] } } | null)?.sops?.age;
  if (!Array.isArray(age)) return undefined;
  return age.map((a) => a?.recipient).filter((r): r is string => typeof r === 'string');
}

const ruleName = (r: SopsRule): string => `creation rule ${r.index + 1}${r.pathRegex ? ` (path_regex ${r.pathRegex})` : ' (no path_regex)'}`;

/**
 * The .sops.yaml side: a rule for every encrypted file, listing the host key and not the example
 * key; and each file's own recipients. `configDir` is where .sops.yaml sits, relative to the root.
 */
export function sopsProblems(tree: Tree, config: SopsConfig, configDir: string, hostRecipients: readonly string[], recipientsOf: (file: string) => string[] | undefined): Problem[] {
  const out: Problem[] = [];
  const flagged = new Set<number>();
  const host = hostRecipients.join(', ');
  for (const file of tree.encrypted) {
    const path = configDir === '' || configDir === '.' ? file : posix.relative(configDir, file);
    const rule = ruleFor(config, path);
    if (!rule) {
      out.push({ file, message: `no creation rule in ${config.file} matches it, so sops cannot re-encrypt it to the right key; widen a path_regex (e.g. ${posix.dirname(path)}/.*\\.enc\\.(yaml|json)$)` });
    } else if (!flagged.has(rule.index)) {
      flagged.add(rule.index);
      if (!rule.recipients.some((r) => hostRecipients.includes(r))) {
        out.push({ file: config.file, message: `${ruleName(rule)} does not list the host key's recipient ${host}; add it (age-keygen -y on the host prints it) and run \`sops updatekeys\` on each file it covers` });
      }
      if (rule.recipients.includes(EXAMPLE_AGE_RECIPIENT)) {
        out.push({ file: config.file, message: `${ruleName(rule)} still lists ${EXAMPLE_NOTE}; replace it with the host key's recipient and run \`sops updatekeys\` on each file` });
      }
    }
    const recipients = recipientsOf(file);
    if (recipients === undefined) {
      out.push({ file, message: 'is named like an encrypted file but has no sops age metadata; encrypt it with `sops encrypt --in-place`' });
    } else if (recipients.includes(EXAMPLE_AGE_RECIPIENT)) {
      out.push({ file, message: `is encrypted to ${EXAMPLE_NOTE}: anyone can read it; put your own values in and re-encrypt it to the host key (sops updatekeys is not enough: the values are the examples' too)` });
    }
  }
  return out;
}

/**
 * Every file a ksops generator names exists (relative to the generator, as kustomize resolves
 * them): its top-level `files:`, and the `files:` of each `secretFrom:` entry (ksops v4).
 */
export function generatorProblems(tree: Tree): Problem[] {
  const have = new Set(tree.files);
  const out: Problem[] = [];
  for (const { file, doc } of tree.docs) {
    if (doc.kind !== 'ksops') continue;
    const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
    const files = [...list(doc.files), ...list(doc.secretFrom).flatMap((e) => list((e as { files?: unknown } | null)?.files))];
    if (files.length === 0) {
      out.push({ file, message: 'is a ksops generator without files: (or secretFrom[].files:); list the encrypted files it decrypts' });
      continue;
    }
    for (const entry of files.map(String)) {
      // "key=path" (secretFrom-style) names the file after the '='.
      const target = entry.includes('=') ? entry.slice(entry.indexOf('=') + 1) : entry;
      const resolved = posix.normalize(posix.join(posix.dirname(file), target));
      if (!have.has(resolved)) out.push({ file, message: `ksops generator ${String((doc.metadata as { name?: string } | undefined)?.name ?? '')} names ${target}, which does not exist (${resolved}); Argo CD would fail to build this app` });
    }
  }
  return out;
}

interface Served {
  host: string;
  where: string;
}

/** Ingress hosts in a Helm values tree: any `ingress: { hosts: [...] }` not switched off. */
export function valuesIngressHosts(v: unknown, out: string[]): void {
  if (!v || typeof v !== 'object') return;
  if (Array.isArray(v)) return v.forEach((x) => valuesIngressHosts(x, out));
  for (const [k, x] of Object.entries(v)) {
    if (k === 'ingress' && x && typeof x === 'object' && !Array.isArray(x) && (x as { enabled?: unknown }).enabled !== false) {
      for (const h of ((x as { hosts?: unknown }).hosts as unknown[] | undefined) ?? []) {
        const name = typeof h === 'string' ? h : (h as { host?: unknown; name?: unknown } | null)?.host ?? (h as { name?: unknown } | null)?.name;
        if (typeof name === 'string') out.push(name);
      }
    }
    valuesIngressHosts(x, out);
  }
}

function applicationValues(doc: Record<string, unknown>): unknown[] {
  const spec = doc.spec as { source?: unknown; sources?: unknown[] } | undefined;
  const sources = [spec?.source, ...(spec?.sources ?? [])].filter(Boolean) as { helm?: { valuesObject?: unknown; values?: unknown } }[];
  return sources.flatMap((s) => {
    const out: unknown[] = [];
    if (s.helm?.valuesObject) out.push(s.helm.valuesObject);
    if (typeof s.helm?.values === 'string') {
      try {
        out.push(parse(s.helm.values));
      } catch {
        // an unparsable values string is Argo CD's error to report
      }
    }
    return out;
  });
}

export function servedHosts(docs: readonly TreeDoc[]): { hosts: Served[]; lbIps: Map<string, string> } {
  const hosts: Served[] = [];
  const lbIps = new Map<string, string>();
  for (const { file, doc } of docs) {
    const name = String((doc.metadata as { name?: string } | undefined)?.name ?? '');
    if (doc.kind === 'Ingress') {
      const spec = doc.spec as { rules?: { host?: string }[] } | undefined;
      for (const r of spec?.rules ?? []) if (r.host) hosts.push({ host: r.host.toLowerCase(), where: `${file}: Ingress ${name}` });
    } else if (doc.kind === 'Application') {
      const found: string[] = [];
      for (const v of applicationValues(doc)) valuesIngressHosts(v, found);
      for (const h of found) hosts.push({ host: h.toLowerCase(), where: `${file}: Application ${name} (Helm values)` });
    } else if (doc.kind === 'Service' && (doc.spec as { type?: string } | undefined)?.type === 'LoadBalancer') {
      const ann = ((doc.metadata as { annotations?: Record<string, string> } | undefined)?.annotations ?? {}) as Record<string, string>;
      for (const key of LB_IP_ANNOTATIONS) for (const ip of (ann[key] ?? '').split(',').map((s) => s.trim()).filter(Boolean)) lbIps.set(ip, `${file}: Service ${name}`);
    }
  }
  return { hosts, lbIps };
}

/**
 * The tree's Ingress hosts and the settings' hosts table agree: each Ingress host has a record,
 * and each local/external host is served by an Ingress, the tunnel's own service, or (a local
 * host with its own `ip`) a LoadBalancer Service pinned to that ip.
 */
export function hostProblems(tree: Tree, settings: Settings, settingsFile: string, daemonHosts: readonly string[] = []): Problem[] {
  const out: Problem[] = [];
  const { hosts: served, lbIps } = servedHosts(tree.docs);
  const table = new Map(settings.hosts.map((h) => [fqdn(h.name, settings.domain), h]));
  for (const s of served) {
    const h = table.get(s.host);
    const [file, ...rest] = s.where.split(': ');
    const what = rest.join(': ');
    if (!h) {
      out.push({ file: file!, message: `${what} serves ${s.host}, which has no entry in the hosts table of ${settingsFile}; add { name = "${s.host.replace(`.${settings.domain}`, '')}"; access = "local"; } (or "external") so DNS points at it` });
    } else if (h.access === 'local' && h.ip && h.ip !== settings.network.ingressIP) {
      out.push({ file: file!, message: `${what} serves ${s.host}, but ${settingsFile} points ${s.host} at ${h.ip}, not the shared ingress VIP ${settings.network.ingressIP}; drop its ip (or serve it from a LoadBalancer Service on ${h.ip})` });
    }
  }
  // The daemon's own charts serve some hosts: Argo CD's (its global.domain) and any Ingress in their values (Hubble UI).
  const servedSet = new Set([...served.map((s) => s.host), fqdn(settings.argocd.hostname, settings.domain), ...daemonHosts.map((h) => h.toLowerCase())]);
  for (const [name, h] of table) {
    if (servedSet.has(name)) continue;
    if (h.access === 'external' && h.service && h.service !== DEFAULTS.ingressService) continue; // the tunnel goes straight to its service
    if (h.access === 'local' && h.ip && h.ip !== settings.network.ingressIP) {
      if (lbIps.has(h.ip)) continue;
      out.push({ file: settingsFile, message: `host ${name} points at ${h.ip}, but no LoadBalancer Service in the tree pins that address (annotation lbipam.cilium.io/ips: "${h.ip}"); nothing would answer there` });
      continue;
    }
    out.push({ file: settingsFile, message: `host ${name} (${h.access}) is served by no Ingress in the tree; requests for it would get 404 from the Cilium ingress: add an Ingress with host ${name}, or remove the host` });
  }
  return out;
}

export function formatProblem(p: Problem): string {
  return `${p.file}: ${p.message}`;
}

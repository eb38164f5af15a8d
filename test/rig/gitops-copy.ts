// A copy of the GitOps tree (.sops.yaml + manifests/) made the user's own, the way a user does it:
// a fresh age key from the real age-keygen, that key in .sops.yaml in place of the shipped
// recipients, and every *.enc.yaml written again with new values and encrypted by the real sops.
// The tests that build or check the tree use such a copy, so they never depend on the key the
// committed files are encrypted to.
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { parse as parseYaml, stringify } from 'yaml';
import { binDir, binPath, repoRoot } from './binaries.ts';

export interface AgeKey {
  file: string;
  recipient: string;
  text: string;
}

/** A new age identity in `dir`/`name`, made by the real age-keygen. */
export function ageKeygen(dir: string, name = 'keys.txt'): AgeKey {
  const file = join(dir, name);
  execFileSync(binPath('age-keygen'), ['-o', file], { stdio: ['ignore', 'ignore', 'pipe'] });
  const text = readFileSync(file, 'utf8');
  const recipient = /# public key: (age1\S+)/.exec(text)?.[1];
  if (!recipient) throw new Error(`age-keygen wrote no public key comment to ${file}`);
  return { file, recipient, text };
}

export const treeOf = (root: string) => join(root, 'manifests', 'argocd-homelab');

export function encryptedFiles(root: string): string[] {
  const walk = (d: string): string[] => readdirSync(d).flatMap((n) => (statSync(join(d, n)).isDirectory() ? walk(join(d, n)) : [join(d, n)]));
  return walk(treeOf(root)).filter((f) => /\.enc\.(yaml|json)$/.test(f));
}

/** Copies this checkout's .sops.yaml and manifests/ to `dest`. */
export function copyGitopsTree(dest: string): string {
  mkdirSync(dest, { recursive: true });
  cpSync(join(repoRoot, '.sops.yaml'), join(dest, '.sops.yaml'));
  cpSync(join(repoRoot, 'manifests'), join(dest, 'manifests'), { recursive: true });
  return dest;
}

/** The age recipients of every creation rule of `root`/.sops.yaml. */
export function ruleRecipients(root: string): string[] {
  const cfg = parseYaml(readFileSync(join(root, '.sops.yaml'), 'utf8'));
  return cfg.creation_rules.flatMap((r: any) => (r.key_groups ?? []).flatMap((g: any) => g.age ?? []));
}

/** Runs the real sops with `env` added; PATH gets the test binaries (ksops and sops live there). */
export function sops(args: string[], opts: { cwd: string; env?: Record<string, string> }): string {
  return execFileSync(binPath('sops'), args, {
    cwd: opts.cwd,
    encoding: 'utf8',
    env: { ...process.env, PATH: `${binDir()}:${process.env.PATH ?? ''}`, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/**
 * Makes the copy at `root` the owner's of `recipient`: .sops.yaml lists only it, and every
 * encrypted file holds `value(<namespace>/<name>, key)` for each key it had, encrypted to it.
 * Names and keys stay; values and recipients change. Returns the plaintext values written.
 */
export function rekeyCopy(root: string, recipient: string, value: (secret: string, key: string) => string): Record<string, Record<string, string>> {
  const cfgFile = join(root, '.sops.yaml');
  const old = ruleRecipients(root);
  let cfg = readFileSync(cfgFile, 'utf8');
  for (const r of old) cfg = cfg.split(r).join(recipient);
  writeFileSync(cfgFile, cfg);
  const written: Record<string, Record<string, string>> = {};
  for (const file of encryptedFiles(root)) {
    const doc = parseYaml(readFileSync(file, 'utf8'));
    const { sops: _meta, ...secret } = doc;
    const keys = Object.keys({ ...(doc.data ?? {}), ...(doc.stringData ?? {}) });
    // The namespace the Secret lands in: its own, or its kustomization's.
    const kustomization = parseYaml(readFileSync(join(file, '..', 'kustomization.yaml'), 'utf8'));
    const id = `${secret.metadata.namespace ?? kustomization.namespace}/${secret.metadata.name}`;
    const plain: Record<string, string> = Object.fromEntries(keys.map((k) => [k, value(id, k)]));
    delete secret.data;
    secret.stringData = plain;
    written[id] = plain;
    // No "# EXAMPLE" header: the file is the owner's now.
    writeFileSync(file, stringify(secret));
    sops(['--encrypt', '--in-place', relative(root, file)], { cwd: root });
  }
  return written;
}

// Small GitOps trees encrypted at run time with the real age-keygen and sops, for check-repo and
// the migration runbook: each test makes its own keys, so no private key of a tree lives in test/.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { binPath } from './binaries.ts';

export interface AgeKey {
  file: string;
  recipient: string;
  /** The identity line: test material, for leak checks only. */
  identity: string;
}

export function ageKeygen(file: string): AgeKey {
  mkdirSync(dirname(file), { recursive: true });
  execFileSync(binPath('age-keygen'), ['-o', file], { stdio: 'ignore' });
  const text = readFileSync(file, 'utf8');
  const identity = text.split('\n').find((l) => l.startsWith('AGE-SECRET-KEY-1'))!;
  const recipient = execFileSync(binPath('age-keygen'), ['-y', file], { encoding: 'utf8' }).trim();
  return { file, recipient, identity };
}

/** A .sops.yaml with one rule for `pathRegex`, encrypting data/stringData to `recipients`. */
export function sopsConfig(pathRegex: string, recipients: string[]): string {
  return `creation_rules:\n  - path_regex: ${pathRegex}\n    encrypted_regex: ^(data|stringData)$\n    key_groups:\n      - age:\n${recipients.map((r) => `          - ${r}\n`).join('')}`;
}

/** Encrypts `plain` (YAML) with the real sops as if it were `root/path`, and writes it there. */
export function encryptInto(root: string, path: string, plain: string, recipients?: string[]): void {
  const args = ['encrypt', '--filename-override', path, '--input-type', 'yaml', '--output-type', 'yaml'];
  if (recipients) args.push('--age', recipients.join(','));
  const out = execFileSync(binPath('sops'), args, { cwd: root, input: plain, encoding: 'utf8', env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: root } });
  mkdirSync(dirname(join(root, path)), { recursive: true });
  writeFileSync(join(root, path), out);
}

export function secretYaml(name: string, data: Record<string, string>): string {
  return `apiVersion: v1\nkind: Secret\nmetadata:\n  name: ${name}\ntype: Opaque\nstringData:\n${Object.entries(data)
    .map(([k, v]) => `  ${k}: ${JSON.stringify(v)}\n`)
    .join('')}`;
}

export function ksopsGenerator(name: string, files: string[]): string {
  return `apiVersion: viaduct.ai/v1\nkind: ksops\nmetadata:\n  name: ${name}\n  annotations:\n    config.kubernetes.io/function: |\n      exec:\n        path: ksops\nfiles:\n${files.map((f) => `  - ${f}\n`).join('')}`;
}

export function write(root: string, path: string, text: string): void {
  mkdirSync(dirname(join(root, path)), { recursive: true });
  writeFileSync(join(root, path), text);
}

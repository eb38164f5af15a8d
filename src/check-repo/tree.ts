// Reads the GitOps tree for check-repo: every file's path, and the YAML documents of the YAML
// files. Encrypted files are parsed too, but only their `sops` metadata is ever looked at.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, sep } from 'node:path';
import { parseAllDocuments } from 'yaml';

export interface TreeDoc {
  /** Path relative to the repository root, with '/'. */
  file: string;
  doc: Record<string, unknown>;
}

export interface Tree {
  root: string;
  /** Every file under the GitOps path, relative to root. */
  files: string[];
  /** `*.enc.yaml` / `*.enc.json`. */
  encrypted: string[];
  /** Parsed documents of the plain YAML files (not the encrypted ones). */
  docs: TreeDoc[];
  /** Files that are not valid YAML: their name and the parser's position, never their text. */
  unreadable: { file: string; why: string }[];
}

export const ENCRYPTED = /\.enc\.(yaml|yml|json)$/;
const MAX_FILE = 4 * 1024 * 1024;

const rel = (root: string, p: string): string => relative(root, p).split(sep).join('/');

function walk(dir: string, out: string[]): void {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name === '.git') continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else if (e.isFile()) out.push(p);
  }
}

export function readTree(root: string, gitopsPath: string): Tree {
  const base = join(root, gitopsPath);
  const abs: string[] = [];
  walk(base, abs);
  abs.sort();
  const tree: Tree = { root, files: abs.map((p) => rel(root, p)), encrypted: [], docs: [], unreadable: [] };
  for (const p of abs) {
    const file = rel(root, p);
    if (ENCRYPTED.test(file)) {
      tree.encrypted.push(file);
      continue;
    }
    if (!/\.ya?ml$/.test(file) || statSync(p).size > MAX_FILE) continue;
    for (const d of parseAllDocuments(readFileSync(p, 'utf8'))) {
      if (d.errors.length > 0) {
        const line = d.errors[0]!.linePos?.[0]?.line;
        tree.unreadable.push({ file, why: `not valid YAML${line ? ` (line ${line})` : ''}` });
        break;
      }
      const doc = d.toJS({ maxAliasCount: 100 }) as unknown;
      if (doc && typeof doc === 'object' && !Array.isArray(doc)) tree.docs.push({ file, doc: doc as Record<string, unknown> });
    }
  }
  return tree;
}

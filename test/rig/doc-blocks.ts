// Runs the commands of a Markdown runbook as written. A block marked `<!-- runnable: NAME -->`
// right before its ```sh fence is run by bash (errexit, pipefail) with the given substitutions
// (paths of this machine for the host's), and with small stand-ins on PATH only for what cannot
// run here: `sudo` (the tests already run with the rights needed), `az` (Azure cannot be reached:
// it answers the runbook's `keyvault secret show|list|delete` from files, as az prints it) and
// `homelab-bootstrap` (this checkout's CLI).
import { execFile } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { binDir, repoRoot } from './binaries.ts';

export function runnableBlocks(markdownFile: string): Map<string, string> {
  const text = readFileSync(markdownFile, 'utf8');
  const out = new Map<string, string>();
  // A block may sit in a list item: its marker, fences and lines share the item's indent.
  const re = /^([ \t]*)<!-- runnable: ([a-z0-9-]+) -->\n\1```sh\n([\s\S]*?)\n\1```/gm;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    const [, indent, name, body] = m as unknown as [string, string, string, string];
    if (out.has(name)) throw new Error(`${markdownFile}: two runnable blocks named ${name}`);
    out.set(name, body.split('\n').map((l) => (l.startsWith(indent) ? l.slice(indent.length) : l)).join('\n'));
  }
  return out;
}

export interface Shims {
  dir: string;
  /** Where the az stand-in reads `<vault>/<name>` values from. */
  vaultDir: string;
}

export function makeShims(dir: string): Shims {
  const bin = join(dir, 'shims');
  const vaultDir = join(dir, 'vaults');
  mkdirSync(bin, { recursive: true });
  mkdirSync(vaultDir, { recursive: true });
  const shim = (name: string, text: string) => {
    writeFileSync(join(bin, name), text);
    chmodSync(join(bin, name), 0o755);
  };
  shim('sudo', '#!/bin/sh\nexec "$@"\n');
  shim('homelab-bootstrap', `#!/bin/sh\nexec "${process.execPath}" "${join(repoRoot, 'src', 'cli.ts')}" "$@"\n`);
  shim(
    'az',
    `#!/bin/sh
# Only what the runbook runs, as az answers it: az keyvault secret show --vault-name V --name N
# --query value -o tsv (the value), list --vault-name V --query '[].name' -o tsv (the names), and
# delete --vault-name V --name N -o none (nothing printed).
[ "$1 $2" = "keyvault secret" ] || { echo "az stand-in: unsupported: $1 $2" >&2; exit 2; }
verb=$3
shift 3
vault= name= query= out=
while [ $# -gt 0 ]; do
  case "$1" in
    --vault-name) vault=$2; shift 2;;
    --name) name=$2; shift 2;;
    --query) query=$2; shift 2;;
    -o|--output) out=$2; shift 2;;
    *) echo "az stand-in: unknown argument $1" >&2; exit 2;;
  esac
done
[ -d "${vaultDir}/$vault" ] || { echo "ERROR: The Vault '$vault' not found within subscription." >&2; exit 3; }
f="${vaultDir}/$vault/$name"
case "$verb" in
  show)
    [ "$query" = value ] && [ "$out" = tsv ] || { echo "az stand-in: expected --query value -o tsv" >&2; exit 2; }
    [ -f "$f" ] || { echo "ERROR: (SecretNotFound) A secret with (name/id) $name was not found in this key vault." >&2; exit 3; }
    cat "$f"; echo;;
  list)
    [ "$query" = "[].name" ] && [ "$out" = tsv ] || { echo "az stand-in: expected --query '[].name' -o tsv" >&2; exit 2; }
    ls "${vaultDir}/$vault";;
  delete)
    [ "$out" = none ] || { echo "az stand-in: delete prints the deleted secret; expected -o none" >&2; exit 2; }
    [ -f "$f" ] || { echo "ERROR: (SecretNotFound) A secret with (name/id) $name was not found in this key vault." >&2; exit 3; }
    rm "$f";;
  *) echo "az stand-in: unsupported: keyvault secret $verb" >&2; exit 2;;
esac
`,
  );
  return { dir: bin, vaultDir };
}

export function putVaultSecret(shims: Shims, vault: string, name: string, value: string): void {
  mkdirSync(join(shims.vaultDir, vault), { recursive: true });
  writeFileSync(join(shims.vaultDir, vault, name), value);
}

export interface BlockRun {
  code: number;
  stdout: string;
  stderr: string;
}

export function runBlock(script: string, opts: { cwd: string; shims: Shims; substitutions?: [string, string][]; env?: NodeJS.ProcessEnv; input?: string }): Promise<BlockRun> {
  let text = script;
  for (const [from, to] of opts.substitutions ?? []) text = text.split(from).join(to);
  return new Promise((resolve) => {
    const child = execFile(
      'bash',
      ['-euo', 'pipefail', '-c', text],
      { cwd: opts.cwd, timeout: 120_000, env: { PATH: `${opts.shims.dir}:${binDir()}:${process.env.PATH}`, HOME: opts.cwd, ...opts.env } },
      (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout: String(stdout), stderr: String(stderr) }),
    );
    child.stdin?.end(opts.input ?? '');
  });
}

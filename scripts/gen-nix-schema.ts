// Writes nix/settings-schema.json from the daemon's own settings schema, so the NixOS module
// (which builds its typed `settings` options from that file at evaluation time) documents
// exactly what the daemon accepts. Nix cannot run TypeScript, hence a committed copy;
// `--check` fails when the copy is stale, and test/unit/nix-contract.test.ts does the same.
//
//   node scripts/gen-nix-schema.ts          rewrite nix/settings-schema.json
//   node scripts/gen-nix-schema.ts --check  exit 1 if it differs from a fresh generation
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { settingsJsonSchema } from '../src/settings/schema.ts';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const nixSchemaPath = join(repoRoot, 'nix', 'settings-schema.json');

/** The exact bytes the committed file must hold: stable key order is zod's, two-space indent. */
export function renderNixSchema(): string {
  return `${JSON.stringify(settingsJsonSchema(), null, 2)}\n`;
}

function main(argv: string[]): number {
  const fresh = renderNixSchema();
  const shown = relative(process.cwd(), nixSchemaPath) || nixSchemaPath;
  if (argv.includes('--check')) {
    let current = '';
    try {
      current = readFileSync(nixSchemaPath, 'utf8');
    } catch {
      // A missing file is simply stale.
    }
    if (current === fresh) {
      process.stdout.write(`${shown}: up to date\n`);
      return 0;
    }
    process.stderr.write(`${shown} is stale: the daemon's settings schema changed. Run: node scripts/gen-nix-schema.ts\n`);
    return 1;
  }
  writeFileSync(nixSchemaPath, fresh);
  process.stdout.write(`wrote ${shown}\n`);
  return 0;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = main(process.argv.slice(2));
}

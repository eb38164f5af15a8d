// Builds dist/, what the Nix package runs: src/ bundled by esbuild into ES modules, split at
// each command's lazy import so `--version` and `validate-config` still load only their own
// code. Bundled for one reason: the Cloudflare SDK's client module imports every resource of
// the API (about 30 MiB of memory on every boot), and only a bundler drops the ones
// src/adapters/cloudflare-sdk.ts does not name. Every other dependency stays external, loaded
// from node_modules as it is published (pino starts its pretty-printer in a worker by module
// name, which a bundle would break). Types are checked by `npm test` (tsc --noEmit), not here.
// `--outdir DIR` builds elsewhere (the tests build their own copy); DIR must sit directly in the
// repository, as dist/ does, for package.json and node_modules to be found from it.
import { build } from 'esbuild';
import { readFileSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

const root = fileURLToPath(new URL('..', import.meta.url));
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
const BUNDLED = new Set(['cloudflare']);
const external = Object.keys(pkg.dependencies).filter((d) => !BUNDLED.has(d));

const { values } = parseArgs({ options: { outdir: { type: 'string' } } });
const outdir = resolve(values.outdir ?? join(root, 'dist'));
if (dirname(outdir) !== resolve(root)) throw new Error(`--outdir ${outdir}: must be a folder directly in ${root}, as dist/ is`);
rmSync(outdir, { recursive: true, force: true });
await build({
  entryPoints: [join(root, 'src', 'cli.ts')],
  outdir,
  bundle: true,
  splitting: true,
  // Every chunk directly in dist/: src/version.ts finds package.json at `../` from there.
  chunkNames: '[name]-[hash]',
  format: 'esm',
  platform: 'node',
  target: 'node24',
  external,
  logLevel: 'warning',
});

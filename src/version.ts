// The package's version, for --version, usage and the User-Agent. Read from package.json next
// to the folder this module sits in: src/ when run from source, dist/ when built (the build
// keeps every chunk directly in dist/ so that this path holds).
import { readFileSync } from 'node:fs';

export const VERSION: string = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

// Stand-in for ksops v4.5.1 as a kustomize exec generator, used ONLY because ksops' Go module
// cannot be installed from this machine's module proxy (it answers 403 for every version).
// It implements ksops' generator contract (`apiVersion: viaduct.ai/v1, kind: ksops, files: [...]`):
// read the ResourceList on stdin, decrypt each listed file with the REAL `sops` binary (so the
// age key and SOPS formats are exercised for real), and emit the decrypted objects. When a
// real ksops is built into .bin, scripts/test-binaries.sh uses it instead.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { parse, parseAllDocuments, stringify } from 'yaml';

const sops = process.env.SOPS_BIN ?? 'sops';
const list = parse(readFileSync(0, 'utf8')) as { functionConfig?: { kind?: string; files?: string[] } };
const config = list.functionConfig;
if (config?.kind !== 'ksops' || !Array.isArray(config.files)) {
  process.stderr.write('ksops: functionConfig must be a viaduct.ai/v1 ksops with files\n');
  process.exit(1);
}
const items: unknown[] = [];
for (const file of config.files) {
  let plain: string;
  try {
    plain = execFileSync(sops, ['--decrypt', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    process.stderr.write(`ksops: error decrypting file ${file}: ${(e as { stderr?: string }).stderr ?? (e as Error).message}\n`);
    process.exit(1);
  }
  for (const doc of parseAllDocuments(plain)) items.push(doc.toJS());
}
process.stdout.write(stringify({ apiVersion: 'config.kubernetes.io/v1', kind: 'ResourceList', items }));

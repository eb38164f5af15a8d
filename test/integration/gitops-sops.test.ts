// SOPS that is real and testable at once: a copy of the tree is made a user's own (a fresh key
// from the real age-keygen in .sops.yaml, every secret written again and encrypted by the real
// sops), and the tree's own tests still pass on it. The copy decrypts with the new key only; the
// shipped example files are encrypted to the published example key, which check-repo refuses.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { repoRoot } from '../rig/binaries.ts';
import { ageKeygen, copyGitopsTree, encryptedFiles, rekeyCopy, ruleRecipients, sops, type AgeKey } from '../rig/gitops-copy.ts';
import { EXAMPLE_AGE_RECIPIENT } from '../../src/gitops/example-key.ts';

const exampleKey = join(repoRoot, 'test', 'fixtures', 'age', 'test-key.txt');

/** The tree's own file-level tests, run on `root` (HB_GITOPS_ROOT) in a child node:test. */
function treeTests(root: string): { code: number; output: string } {
  // Without NODE_TEST_CONTEXT: with it the child thinks it runs inside this test and runs nothing.
  const { NODE_TEST_CONTEXT: _inside, ...env } = process.env;
  const r = spawnSync(process.execPath, ['--test', '--test-reporter=spec', join(repoRoot, 'test', 'unit', 'manifests.test.ts')], {
    env: { ...env, HB_GITOPS_ROOT: root },
    encoding: 'utf8',
    timeout: 300_000,
  });
  return { code: r.status ?? -1, output: `${r.stdout}${r.stderr}` };
}

describe('the tree re-keyed to a new age key', () => {
  let dir: string;
  let root: string;
  let key: AgeKey;
  let values: Record<string, Record<string, string>>;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'hb-gitops-sops-'));
    key = ageKeygen(dir);
    root = copyGitopsTree(join(dir, 'repo'));
    values = rekeyCopy(root, key.recipient, (secret, k) => `${secret}:${k}:${key.recipient.slice(-8)}`);
  });
  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('in this checkout, exactly the files marked "# EXAMPLE" open with the published example key', () => {
    // Shipped: every file is an example. In a user's own tree: none is, and none may still open
    // with a key whose private half anyone can read.
    const files = encryptedFiles(repoRoot);
    assert.ok(files.length >= 3);
    for (const f of files) {
      const rel = relative(repoRoot, f);
      const marked = /^# EXAMPLE/.test(readFileSync(f, 'utf8'));
      let opens = true;
      try {
        sops(['--decrypt', rel], { cwd: repoRoot, env: { SOPS_AGE_KEY_FILE: exampleKey } });
      } catch {
        opens = false;
      }
      assert.equal(opens, marked, marked ? `${rel} is marked as an example but does not open with the example key` : `${rel} opens with the published example key: encrypt it to your own key`);
      if (marked) assert.ok(parseYaml(readFileSync(f, 'utf8')).sops.age.some((a: any) => a.recipient === EXAMPLE_AGE_RECIPIENT), rel);
    }
  });

  it('every re-keyed file decrypts with the new key to the new values, and no longer with the example key', () => {
    assert.deepEqual(ruleRecipients(root), [key.recipient]);
    assert.equal(Object.keys(values).length, encryptedFiles(root).length);
    for (const f of encryptedFiles(root)) {
      const rel = relative(root, f);
      const plain = parseYaml(sops(['--decrypt', rel], { cwd: root, env: { SOPS_AGE_KEY_FILE: key.file } }));
      const id = `${plain.metadata.namespace ?? parseYaml(readFileSync(join(f, '..', 'kustomization.yaml'), 'utf8')).namespace}/${plain.metadata.name}`;
      assert.deepEqual(plain.stringData, values[id], rel);
      assert.throws(() => sops(['--decrypt', rel], { cwd: root, env: { SOPS_AGE_KEY_FILE: exampleKey } }), `${rel} still opens with the example key`);
      assert.doesNotMatch(readFileSync(f, 'utf8'), /^# EXAMPLE/m, `${rel}: the copy is no example`);
    }
  });

  it('the tree tests pass on the re-keyed copy', () => {
    const r = treeTests(root);
    assert.equal(r.code, 0, r.output.split('\n').filter((l) => /✖|Error|expected|actual/.test(l)).slice(0, 40).join('\n'));
    assert.match(r.output, /SOPS setup/, 'the SOPS tests ran');
    assert.match(r.output, /ℹ pass [1-9]\d+/, 'the tree tests ran');
  });

  it('and fail on a copy whose .sops.yaml no longer matches its files (the check is not a rubber stamp)', () => {
    const cfgFile = join(root, '.sops.yaml');
    const good = readFileSync(cfgFile, 'utf8');
    try {
      writeFileSync(cfgFile, good.split(key.recipient).join(EXAMPLE_AGE_RECIPIENT));
      const r = treeTests(root);
      assert.notEqual(r.code, 0, 'the tree tests passed on files encrypted to a key .sops.yaml does not list');
      assert.match(r.output, /is not in its \.sops\.yaml rule \(run sops updatekeys\)/);
    } finally {
      writeFileSync(cfgFile, good);
    }
  });
});

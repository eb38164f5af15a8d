// What leaves the process never carries a secret, and inputs that never end are refused:
// scrub() on every path, credential files checked before use, only regular files read, bounded.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { errorMessage, scrub, Secret } from '../../src/secret.ts';
import { readRegularFile, FileReadError } from '../../src/read-file.ts';
import { apiToken, CredentialError, Credentials } from '../../src/credentials.ts';
import { loadSettings, SettingsError } from '../../src/settings/load.ts';
import { recordRun } from '../../src/engine/state.ts';
import { formatPlan, formatSummary } from '../../src/format.ts';
import type { StepReport } from '../../src/engine/run.ts';
import type { Settings } from '../../src/settings/schema.ts';

const dir = mkdtempSync(join(tmpdir(), 'hb-secret-io-'));
const fifo = join(dir, 'fifo');
assert.equal(spawnSync('mkfifo', [fifo]).status, 0, 'mkfifo');

test('a multi-line secret is scrubbed whole, line by line, and JSON-escaped', () => {
  new Secret('first-line-of-a-secret\nsecond-line-of-a-secret\n');
  assert.equal(scrub('x first-line-of-a-secret\nsecond-line-of-a-secret y'), 'x [REDACTED] y');
  assert.equal(scrub('only second-line-of-a-secret here'), 'only [REDACTED] here');
  assert.equal(scrub(JSON.stringify({ m: 'first-line-of-a-secret\nsecond-line-of-a-secret' })), '{"m":"[REDACTED]"}');
  assert.equal(errorMessage(new Error('quoted: first-line-of-a-secret')), 'quoted: [REDACTED]');
});

test('the state file, the summary and the plan carry no secret even when a step error quotes one', () => {
  new Secret('state-file-secret-0123456789');
  const report: StepReport = { step: 'tunnel', outcome: 'failed', changes: [], error: 'oops: state-file-secret-0123456789', startedAt: new Date().toISOString(), durationMs: 5, attempts: 1 };
  const stateDir = join(dir, 'state');
  recordRun(stateDir, 'apply', Date.now(), [report]);
  const text = readFileSync(join(stateDir, 'state.json'), 'utf8');
  assert.ok(!text.includes('state-file-secret-0123456789'));
  assert.match(text, /oops: \[REDACTED\]/);
  // formatSummary/formatPlan print the report as is: the engine scrubs it, and the CLI scrubs stdout.
  assert.ok(formatSummary([report]).includes('state-file-secret'), 'control: the formatter itself does not scrub');
  assert.ok(formatPlan([report]).includes('state-file-secret'));
});

test('only regular files are read: a FIFO without a writer, /dev/zero and a directory are refused at once', () => {
  const t = performance.now();
  assert.throws(() => readRegularFile(fifo, 1024), (e) => e instanceof FileReadError && e.code === 'NOTREGULAR' && e.reason === 'is a named pipe (FIFO), not a regular file');
  assert.throws(() => readRegularFile('/dev/zero', 1024), (e) => e instanceof FileReadError && e.reason === 'is a character device, not a regular file');
  assert.throws(() => readRegularFile(dir, 1024), (e) => e instanceof FileReadError && e.reason === 'is a directory');
  assert.throws(() => readRegularFile(join(dir, 'missing'), 1024), (e) => e instanceof FileReadError && e.reason === 'does not exist');
  assert.ok(performance.now() - t < 1000);
  const big = join(dir, 'big');
  writeFileSync(big, Buffer.alloc(2048, 'a'));
  assert.throws(() => readRegularFile(big, 1024), (e) => e instanceof FileReadError && e.code === 'TOOLARGE' && e.reason === 'is larger than 1 KiB');
  assert.equal(readRegularFile(big, 4096).length, 2048);
});

test('the API token file: one line of printable ASCII; errors name the file and never echo it', () => {
  const where = 'cloudflare-api-token credential /x/token ($.cloudflare.apiTokenFile)';
  assert.equal(apiToken('abcDEF-123_xyz\n', where), 'abcDEF-123_xyz');
  assert.equal(apiToken('abcDEF-123_xyz\r\n', where), 'abcDEF-123_xyz');
  const bad: [string, RegExp][] = [
    ['tok-secret-AAAA\nline-two-BBBB\n', /\/x\/token \(\$\.cloudflare\.apiTokenFile\) holds 2 lines; it must hold the API token alone, on one line/],
    ['Bearer tok-secret-AAAA\n', /\/x\/token \(\$\.cloudflare\.apiTokenFile\) starts with "Bearer ": write the token alone/],
    ['tok-secret AAAA', /holds a character that is not printable ASCII or is a space \(character 11 of the token\)/],
    ['tok-secret-\u00e9AAAA', /holds a character that is not printable ASCII/],
    ['tok-secret-\u0000AAAA', /holds a character that is not printable ASCII/],
  ];
  for (const [text, re] of bad) {
    assert.throws(
      () => apiToken(text, where),
      (e) => e instanceof CredentialError && re.test(e.message) && !e.message.includes('AAAA') && !e.message.includes('BBBB'),
      JSON.stringify(text),
    );
  }
});

test('credentials that never end (a FIFO, /dev/zero) are refused with the file and field named', async () => {
  for (const path of [fifo, '/dev/zero']) {
    const c = new Credentials({ kubeconfigFile: path, sops: { ageKeyFile: path }, cloudflare: { apiTokenFile: path }, gitops: {} } as unknown as Settings, '');
    for (const name of ['kubeconfig', 'age-key', 'cloudflare-api-token'] as const) {
      const t = performance.now();
      await assert.rejects(c.read(name), (e) => e instanceof CredentialError && e.message.startsWith(`${name} credential ${path} (${c.field(name)}) is a `) && /not a regular file; it cannot be the .+ \(wrong path\?\)$/.test(e.message));
      assert.ok(performance.now() - t < 1000);
    }
  }
});

test('settings: a FIFO, /dev/zero, a directory and an oversized file are refused; a token file as --config is never quoted', () => {
  const cases: [string, RegExp][] = [
    [fifo, /the settings file is a named pipe \(FIFO\), not a regular file; pass a JSON file with --config/],
    ['/dev/zero', /the settings file is a character device, not a regular file/],
    [dir, /the settings file is a directory/],
  ];
  const big = join(dir, 'big.json');
  writeFileSync(big, `{"a": "${'x'.repeat(1024 * 1024)}"}`);
  cases.push([big, /the settings file is larger than 1024 KiB/]);
  for (const [path, re] of cases) {
    const t = performance.now();
    assert.throws(() => loadSettings(path), (e) => e instanceof SettingsError && re.test(e.message), path);
    assert.ok(performance.now() - t < 2000);
  }
  const token = join(dir, 'token');
  writeFileSync(token, 'cf-token-abcdefghijklmnop\n');
  const nested = join(dir, 'nested.json');
  writeFileSync(nested, '{\n  "domain": "x",\n  "hosts": [1, 2,, 3]\n}\n');
  mkdirSync(join(dir, 'd'), { recursive: true });
  for (const [path, where, bytes] of [[token, 'line 1, column 1', 'cf-token'], [nested, 'line 3, column 18', 'hosts']] as const) {
    assert.throws(
      () => loadSettings(path),
      (e) => e instanceof SettingsError && e.message.includes(`not valid JSON at ${where}; --config takes the JSON settings file`) && !e.message.includes(bytes.slice(0, 3)),
      path,
    );
  }
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { memoryReleaseMemo, stateDirReleaseMemo, valuesDigest, type ReleaseSummary } from '../../src/adapters/release-memo.ts';

const summary = (revision: number): ReleaseSummary => ({ revision, status: 'deployed', chart: { name: 'cilium', version: '1.20.0' }, valuesDigest: valuesDigest({ a: revision }) });

test('values digest: key order does not matter, any value does', () => {
  assert.equal(valuesDigest({ a: 1, b: { c: [1, { d: 2, e: 3 }] } }), valuesDigest({ b: { c: [1, { e: 3, d: 2 }] }, a: 1 }));
  assert.notEqual(valuesDigest({ a: 1 }), valuesDigest({ a: '1' }));
  assert.notEqual(valuesDigest({ a: [1, 2] }), valuesDigest({ a: [2, 1] }));
  assert.notEqual(valuesDigest({}), valuesDigest({ a: null }));
});

test('a summary is found by the exact uid and resourceVersion it was decoded from, and survives the process', () => {
  const dir = join(mkdtempSync(join(tmpdir(), 'hb-memo-')), 'state');
  const memo = stateDirReleaseMemo(dir);
  memo.put({ uid: 'u1', resourceVersion: '10' }, summary(1));
  assert.deepEqual(memo.get({ uid: 'u1', resourceVersion: '10' }), summary(1));
  assert.equal(memo.get({ uid: 'u1', resourceVersion: '11' }), undefined, 'the Secret was written since');
  assert.equal(memo.get({ uid: 'u2', resourceVersion: '10' }), undefined, 'another Secret (a reinstalled cluster)');
  assert.deepEqual(stateDirReleaseMemo(dir).get({ uid: 'u1', resourceVersion: '10' }), summary(1), 'the next run finds it');
  assert.equal(statSync(join(dir, 'helm-releases.json')).mode & 0o777, 0o600);
});

test('the memo stays small, and a damaged file is an empty memo, not an error', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hb-memo-'));
  const memo = stateDirReleaseMemo(dir);
  for (let i = 1; i <= 40; i++) memo.put({ uid: `u${i}`, resourceVersion: '1' }, summary(i));
  const kept = (JSON.parse(readFileSync(join(dir, 'helm-releases.json'), 'utf8')) as { entries: unknown[] }).entries.length;
  assert.ok(kept <= 16, `${kept} entries kept`);
  assert.deepEqual(memo.get({ uid: 'u40', resourceVersion: '1' }), summary(40), 'the newest stays');
  assert.equal(memo.get({ uid: 'u1', resourceVersion: '1' }), undefined, 'the oldest went');
  writeFileSync(join(dir, 'helm-releases.json'), '{"entries": [["u1@1", {"revision": "x"}]], truncated');
  assert.equal(stateDirReleaseMemo(dir).get({ uid: 'u40', resourceVersion: '1' }), undefined);
  writeFileSync(join(dir, 'helm-releases.json'), JSON.stringify({ entries: [['u1@1', { revision: 'one' }], ['u2@1', summary(2)]] }));
  const reread = stateDirReleaseMemo(dir);
  assert.equal(reread.get({ uid: 'u1', resourceVersion: '1' }), undefined, 'a malformed entry is ignored');
  assert.deepEqual(reread.get({ uid: 'u2', resourceVersion: '1' }), summary(2));
});

test('without a state directory the memo lives for the run only', () => {
  const memo = memoryReleaseMemo();
  memo.put({ uid: 'u', resourceVersion: '1' }, summary(3));
  assert.deepEqual(memo.get({ uid: 'u', resourceVersion: '1' }), summary(3));
  assert.equal(memoryReleaseMemo().get({ uid: 'u', resourceVersion: '1' }), undefined);
});

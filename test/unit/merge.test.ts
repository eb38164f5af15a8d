import { test } from 'node:test';
import assert from 'node:assert/strict';
import { deepMerge } from '../../src/desired/merge.ts';

test('objects merge key by key, recursively', () => {
  const out = deepMerge({ a: { b: 1, c: { d: 2 } }, x: 1 }, { a: { c: { e: 3 } } });
  assert.deepEqual(out, { a: { b: 1, c: { d: 2, e: 3 } }, x: 1 });
});

test('scalars replace, including with another type', () => {
  assert.deepEqual(deepMerge({ a: 1, b: 'x', c: true }, { a: 2, b: 3, c: false }), { a: 2, b: 3, c: false });
});

test('arrays replace whole, never merge by index', () => {
  assert.deepEqual(deepMerge({ list: ['dns', 'drop', 'tcp'] }, { list: ['flow'] }), { list: ['flow'] });
});

test('an object replaces a scalar or an array', () => {
  assert.deepEqual(deepMerge({ a: 1, b: [1] }, { a: { x: 1 }, b: { y: 2 } }), { a: { x: 1 }, b: { y: 2 } });
});

test('null deletes the key, at any depth', () => {
  const base = { hubble: { relay: { enabled: true }, metrics: { enabled: ['dns'] } }, devices: ['eth+'] };
  assert.deepEqual(deepMerge(base, { hubble: { metrics: null }, devices: null }), { hubble: { relay: { enabled: true } } });
});

test('null for a key the base lacks, and nulls nested inside a new object, leave no trace', () => {
  assert.deepEqual(deepMerge({ a: 1 }, { missing: null, n: { keep: 1, drop: null } }), { a: 1, n: { keep: 1 } });
});

test('inputs are not modified', () => {
  const base = { a: { b: 1 } };
  const over = { a: { c: 2 } };
  deepMerge(base, over);
  assert.deepEqual(base, { a: { b: 1 } });
  assert.deepEqual(over, { a: { c: 2 } });
});

test('a "__proto__" key from JSON is an ordinary key, not a prototype change', () => {
  const over = JSON.parse('{"__proto__": {"polluted": true}, "a": 1}') as Record<string, unknown>;
  const out = deepMerge({}, over);
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
  assert.equal(Object.getPrototypeOf(out), Object.prototype);
  assert.deepEqual(Object.keys(out).sort(), ['__proto__', 'a']);
});

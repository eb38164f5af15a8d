// A secret value that cannot leak by accident: it prints, serialises and inspects as
// "[redacted]", and every Secret ever made is remembered so that scrub() can cut it out of any
// text. Every path by which text leaves the process (log lines, stdout/stderr of the CLI, the
// state file, the systemd status line) passes scrub(), so a secret that slipped into an error
// message (an SDK quoting a header, an apiserver echoing a value) still never gets out.
const known = new Set<string>();

// Very short values would scrub ordinary words; they are not worth a secret anyway.
const MIN_SECRET = 8;

function remember(value: string): void {
  const v = value.trim();
  if (v.length < MIN_SECRET) return;
  known.add(v);
  // A message may quote one line of a token spread over lines (a token file with a second line):
  // each line is a secret on its own too. Only for token-like values (no blanks within lines): the
  // lines of a document (a kubeconfig's "apiVersion: v1") are not secret by themselves.
  const lines = v.split(/\r?\n|\r/).map((l) => l.trim());
  if (lines.length > 1 && lines.every((l) => !/\s/.test(l))) for (const l of lines) if (l.length >= MIN_SECRET) known.add(l);
}

export class Secret {
  readonly #value: string;
  constructor(value: string) {
    this.#value = value;
    remember(value);
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

/** Marks a value read from elsewhere (a kubeconfig's bearer token) as secret, so scrub() cuts it out. */
export function rememberSecret(value: string | undefined): void {
  if (value) remember(value);
}

/** Replaces every known secret value inside `text`, also in its JSON-escaped form. */
export function scrub(text: string): string {
  let out = text;
  // Longest first: a line of a multi-line secret must not leave the rest of the value behind.
  for (const v of [...known].sort((a, b) => b.length - a.length)) {
    if (out.includes(v)) out = out.split(v).join('[REDACTED]');
    const escaped = JSON.stringify(v).slice(1, -1);
    if (escaped !== v && out.includes(escaped)) out = out.split(escaped).join('[REDACTED]');
  }
  return out;
}

/** The message of an error as it may leave the process: scrubbed. Use for every error text that is printed or stored. */
export function errorMessage(err: unknown): string {
  return scrub(err instanceof Error ? err.message : String(err));
}

// Credentials are files. Under systemd, LoadCredential= puts them in $CREDENTIALS_DIRECTORY
// under fixed names; elsewhere (tests, a shell) the settings' paths are read directly.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Settings } from './settings/schema.ts';
import { Secret } from './secret.ts';
import { FileReadError, readRegularFile } from './read-file.ts';

export const CREDENTIAL_NAMES = ['kubeconfig', 'age-key', 'cloudflare-api-token', 'git-repo-credential'] as const;
export type CredentialName = (typeof CREDENTIAL_NAMES)[number];

/**
 * Largest credential read. A kubeconfig, an age identity file and an API token are a few KiB
 * at most, and a Kubernetes Secret cannot hold more than 1 MiB anyway; without a bound a wrong
 * path (a disk image, /dev/zero) would be read whole into memory, or forever.
 */
export const MAX_CREDENTIAL_BYTES = 1024 * 1024;

export class CredentialError extends Error {
  override name = 'CredentialError';
}

export class Credentials {
  readonly #settings: Settings;
  readonly #dir: string | undefined;
  constructor(settings: Settings, credentialsDirectory = process.env.CREDENTIALS_DIRECTORY) {
    this.#settings = settings;
    this.#dir = credentialsDirectory;
  }

  /** The settings field a credential comes from, for error messages. */
  field(name: CredentialName): string {
    return {
      kubeconfig: '$.kubeconfigFile',
      'age-key': '$.sops.ageKeyFile',
      'cloudflare-api-token': '$.cloudflare.apiTokenFile',
      'git-repo-credential': '$.gitops.repoCredentialFile',
    }[name];
  }

  /** Whether the settings ask for this credential at all (the optional ones may be left out). */
  configured(name: CredentialName): boolean {
    if (name === 'cloudflare-api-token') return this.#settings.cloudflare !== undefined;
    if (name === 'git-repo-credential') return this.#settings.gitops.repoCredentialFile !== undefined;
    return true;
  }

  path(name: CredentialName): string {
    if (this.#dir) {
      const p = join(this.#dir, name);
      if (existsSync(p)) return p;
    }
    const p = {
      kubeconfig: this.#settings.kubeconfigFile,
      'age-key': this.#settings.sops.ageKeyFile,
      'cloudflare-api-token': this.#settings.cloudflare?.apiTokenFile,
      'git-repo-credential': this.#settings.gitops.repoCredentialFile,
    }[name];
    if (!p) throw new CredentialError(`${this.field(name)} is not set; the ${name} credential is needed`);
    return p;
  }

  /** Reads a credential; the error names the path and field, never the content. */
  async read(name: CredentialName): Promise<Secret> {
    const p = this.path(name);
    const where = `${name} credential ${p} (${this.field(name)})`;
    let text: string;
    try {
      text = readRegularFile(p, MAX_CREDENTIAL_BYTES);
    } catch (e) {
      if (!(e instanceof FileReadError)) throw e;
      const hint = e.code === 'TOOLARGE' || e.code === 'NOTREGULAR' ? `; it cannot be the ${name} (wrong path?)` : '';
      throw new CredentialError(`${where} ${e.reason}${hint}`);
    }
    if (text.trim() === '') throw new CredentialError(`${where} is empty`);
    // Made first, so the text is known to scrub() even if checking it fails.
    const secret = new Secret(text);
    return name === 'cloudflare-api-token' ? new Secret(apiToken(text, where)) : secret;
  }
}

/**
 * The token alone, checked before it goes into an HTTP header: there a second line or a byte
 * outside printable ASCII makes the HTTP client throw with the whole header (token included) in
 * its message, and a "Bearer " prefix makes Cloudflare answer an opaque 6003. The errors say
 * where the problem is, never what the bytes are.
 */
export function apiToken(text: string, where: string): string {
  const token = text.trim();
  if (/^bearer\s/i.test(token)) {
    throw new CredentialError(`${where} starts with "Bearer ": write the token alone (the daemon adds the "Bearer " itself)`);
  }
  const nl = token.search(/[\r\n]/);
  if (nl >= 0) {
    const lines = token.split(/\r?\n|\r/).length;
    throw new CredentialError(`${where} holds ${lines} lines; it must hold the API token alone, on one line (a trailing newline is fine)`);
  }
  const bad = [...token].findIndex((c) => c < '!' || c > '~');
  if (bad >= 0) {
    throw new CredentialError(`${where} holds a character that is not printable ASCII or is a space (character ${bad + 1} of the token); a Cloudflare API token is letters, digits, "-" and "_" only`);
  }
  return token;
}

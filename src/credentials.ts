// Credentials are files. Under systemd, LoadCredential= puts them in $CREDENTIALS_DIRECTORY
// under fixed names; elsewhere (tests, a shell) the settings' paths are read directly.
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Settings } from './settings/schema.ts';
import { Secret } from './secret.ts';

export const CREDENTIAL_NAMES = ['kubeconfig', 'age-key', 'cloudflare-api-token'] as const;
export type CredentialName = (typeof CREDENTIAL_NAMES)[number];

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
    return { kubeconfig: '$.kubeconfigFile', 'age-key': '$.sops.ageKeyFile', 'cloudflare-api-token': '$.cloudflare.apiTokenFile' }[name];
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
    }[name];
    if (!p) throw new CredentialError(`${this.field(name)} is not set; the ${name} credential is needed`);
    return p;
  }

  /** Reads a credential; the error names the path and field, never the content. */
  async read(name: CredentialName): Promise<Secret> {
    const p = this.path(name);
    let text: string;
    try {
      text = await readFile(p, 'utf8');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? 'error';
      const why = code === 'ENOENT' ? 'does not exist' : code === 'EACCES' ? 'is not readable (permission denied)' : code === 'EISDIR' ? 'is a directory' : `cannot be read (${code})`;
      throw new CredentialError(`${name} credential ${p} (${this.field(name)}) ${why}`);
    }
    if (text.trim() === '') throw new CredentialError(`${name} credential ${p} (${this.field(name)}) is empty`);
    return new Secret(text);
  }
}

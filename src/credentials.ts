// Credentials are files. Under systemd, LoadCredential= puts them in $CREDENTIALS_DIRECTORY
// under fixed names; elsewhere (tests, a shell) the settings' paths are read directly.
import { open } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Settings } from './settings/schema.ts';
import { Secret } from './secret.ts';

export const CREDENTIAL_NAMES = ['kubeconfig', 'age-key', 'cloudflare-api-token', 'git-repo-credential'] as const;
export type CredentialName = (typeof CREDENTIAL_NAMES)[number];

/**
 * Largest credential read. A kubeconfig, an age identity file and an API token are a few KiB
 * at most, and a Kubernetes Secret cannot hold more than 1 MiB anyway; without a bound a wrong
 * path (a disk image, /dev/zero) would be read whole into memory, or forever.
 */
export const MAX_CREDENTIAL_BYTES = 1024 * 1024;

/** Reads at most `limit` + 1 bytes, so a file that grows or never ends is still bounded. */
async function readBounded(path: string, limit: number): Promise<{ text: string; tooLarge: boolean }> {
  const fh = await open(path, 'r');
  try {
    // open() succeeds on a directory; reading it is what fails. Say so before reading.
    if ((await fh.stat()).isDirectory()) throw Object.assign(new Error('is a directory'), { code: 'EISDIR' });
    const buf = Buffer.alloc(limit + 1);
    let got = 0;
    while (got < buf.length) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, null);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    const tooLarge = got > limit;
    const text = tooLarge ? '' : buf.toString('utf8', 0, got);
    buf.fill(0);
    return { text, tooLarge };
  } finally {
    await fh.close();
  }
}

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
    let text: string;
    try {
      const r = await readBounded(p, MAX_CREDENTIAL_BYTES);
      if (r.tooLarge) throw new CredentialError(`${name} credential ${p} (${this.field(name)}) is larger than ${MAX_CREDENTIAL_BYTES / 1024} KiB; it cannot be a ${name} (wrong path?)`);
      text = r.text;
    } catch (e) {
      if (e instanceof CredentialError) throw e;
      const code = (e as NodeJS.ErrnoException).code ?? 'error';
      const why = code === 'ENOENT' ? 'does not exist' : code === 'EACCES' ? 'is not readable (permission denied)' : code === 'EISDIR' ? 'is a directory' : `cannot be read (${code})`;
      throw new CredentialError(`${name} credential ${p} (${this.field(name)}) ${why}`);
    }
    if (text.trim() === '') throw new CredentialError(`${name} credential ${p} (${this.field(name)}) is empty`);
    return new Secret(text);
  }
}

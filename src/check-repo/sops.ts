// Runs the real `sops` to prove a file decrypts with the host's age key. The key reaches sops as a
// path (SOPS_AGE_KEY_FILE), never as a value in argv or the environment; what sops decrypts goes
// nowhere (stdout is discarded). sops gets an empty HOME, so keys of the user running check-repo
// (~/.config/sops/age/keys.txt, ~/.ssh) cannot make a file look decryptable when the host's
// key alone cannot decrypt it.
import { execa } from 'execa';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export type DecryptResult = { ok: true } | { ok: false; why: string };

const KEY_LIKE = /AGE-SECRET-KEY-[0-9A-Z-]+/gi;

/** sops' reason in one line, with anything that looks like key material cut out. */
export function sopsReason(stderr: string): string {
  const lines = stderr
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  const pick = lines.find((l) => /no identity matched|failed to decrypt|MAC mismatch|error/i.test(l)) ?? lines[0] ?? 'no message';
  return pick.replace(KEY_LIKE, '[redacted]').slice(0, 300);
}

export class SopsRunner {
  readonly bin: string;
  readonly #home: string;
  constructor(bin = process.env.SOPS_BIN ?? 'sops') {
    this.bin = bin;
    this.#home = mkdtempSync(join(tmpdir(), 'hb-check-repo-'));
  }

  async decrypts(file: string, keyFile: string, cwd: string): Promise<DecryptResult> {
    const res = await execa(this.bin, ['decrypt', file], {
      cwd,
      reject: false,
      stdout: 'ignore',
      stdin: 'ignore',
      timeout: 60_000,
      extendEnv: false,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: this.#home, XDG_CONFIG_HOME: this.#home, SOPS_AGE_KEY_FILE: keyFile },
    });
    if (res.exitCode === 0) return { ok: true };
    if (res.exitCode === undefined && res.code === 'ENOENT') {
      throw new Error(`cannot run ${this.bin}: not found (put sops on PATH or set SOPS_BIN)`);
    }
    if (res.timedOut) return { ok: false, why: 'sops did not finish within 60 s' };
    return { ok: false, why: sopsReason(String(res.stderr ?? '')) };
  }

  close(): void {
    rmSync(this.#home, { recursive: true, force: true });
  }
}

// `homelab-bootstrap check-repo`: proves, before the old cluster is wiped, that the GitOps tree will
// work with this host's age key: every encrypted file decrypts (real sops), .sops.yaml encrypts new
// files to the host key, ksops generators name files that exist, no file is still encrypted to the
// shipped example key, and the tree's Ingress hosts agree with the settings' hosts table.
// Read-only; prints problems, never a secret value or key material.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import type { Settings } from '../settings/schema.ts';
import type { Credentials } from '../credentials.ts';
import { parseAgeIdentities } from '../agekey.ts';
import { fileRecipients, generatorProblems, hostProblems, parseSopsConfig, sopsProblems, valuesIngressHosts, type Problem } from './checks.ts';
import { render } from '../render.ts';
import { readTree } from './tree.ts';
import { SopsRunner } from './sops.ts';
import { EXAMPLE_AGE_RECIPIENT } from '../gitops/example-key.ts';

export interface CheckRepoResult {
  problems: Problem[];
  /** What was checked, for the all-clear line. */
  checked: { encrypted: number; generators: number; hosts: number };
}

/** The nearest .sops.yaml from `from` up to `root` (sops looks upward too). */
function findSopsConfig(root: string, from: string): string | undefined {
  for (let d = from; ; d = dirname(d)) {
    const p = join(d, '.sops.yaml');
    if (existsSync(p)) return p;
    if (d === root || !d.startsWith(root) || dirname(d) === d) return undefined;
  }
}

const rel = (root: string, p: string): string => relative(root, p).split(sep).join('/') || '.';

export async function checkRepo(settings: Settings, settingsFile: string, credentials: Credentials, repoDir: string): Promise<CheckRepoResult> {
  const root = resolve(repoDir);
  const base = join(root, settings.gitops.path);
  if (!existsSync(base)) {
    return { problems: [{ file: settings.gitops.path, message: `does not exist under ${root} (gitops.path in ${settingsFile}); is --repo the repository's root?` }], checked: { encrypted: 0, generators: 0, hosts: 0 } };
  }
  const keyFile = credentials.path('age-key');
  const key = await credentials.read('age-key');
  const hostRecipients = (await parseAgeIdentities(key.reveal(), `${keyFile} (${credentials.field('age-key')})`)).map((i) => i.recipient);

  const tree = readTree(root, settings.gitops.path);
  const problems: Problem[] = tree.unreadable.map((u) => ({ file: u.file, message: u.why }));

  // Each encrypted file's recipients, read once: the .sops.yaml checks and the decrypt failures both need them.
  const recipients = new Map(tree.encrypted.map((f) => [f, fileRecipients(readFileSync(join(root, f), 'utf8'))]));
  const configPath = findSopsConfig(root, base);
  if (!configPath) {
    problems.push({ file: '.sops.yaml', message: `missing (looked from ${settings.gitops.path} up to the repository root); add one with a creation rule for ${settings.gitops.path}/.*\\.enc\\.(yaml|json)$ listing the host key's recipient ${hostRecipients.join(', ')}` });
  } else {
    const config = parseSopsConfig(readFileSync(configPath, 'utf8'), rel(root, configPath));
    const configDir = rel(root, dirname(configPath));
    if ('message' in config) problems.push(config);
    else problems.push(...sopsProblems(tree, config, configDir === '.' ? '' : configDir, hostRecipients, (f) => recipients.get(f)));
  }

  const sops = new SopsRunner();
  try {
    for (const file of tree.encrypted) {
      const r = await sops.decrypts(join(root, file), keyFile, root);
      if (r.ok) continue;
      const to = recipients.get(file);
      // Already reported with what to do: no sops metadata, or the example key (new values, not re-keying).
      if (to === undefined || to.includes(EXAMPLE_AGE_RECIPIENT)) continue;
      const toHost = to.some((x) => hostRecipients.includes(x));
      problems.push({
        file,
        message: toHost
          ? `does not decrypt with the host key ${keyFile} although it lists its recipient (sops: ${r.why}); the file may be damaged: re-create it with sops`
          : `does not decrypt with the host key ${keyFile}: it is encrypted to ${to.join(', ') || 'no age recipient'}, not to ${hostRecipients.join(', ')}; run \`sops updatekeys ${file}\` where a key it is encrypted to is available`,
      });
    }
  } finally {
    sops.close();
  }

  problems.push(...generatorProblems(tree));
  problems.push(...hostProblems(tree, settings, settingsFile, daemonServedHosts(settings)));
  return {
    problems,
    checked: { encrypted: tree.encrypted.length, generators: tree.docs.filter((d) => d.doc.kind === 'ksops').length, hosts: settings.hosts.length },
  };
}

/** Hosts the daemon's own Helm releases serve through an Ingress in their values (Hubble UI). */
export function daemonServedHosts(settings: Settings): string[] {
  const hosts: string[] = [];
  for (const r of render(settings).helmReleases) valuesIngressHosts(r.values, hosts);
  return hosts;
}

// The Argo CD repository Secret that lets Argo CD read a private gitops.repoURL. Pure: the
// credential itself is only passed in by the step, at the moment it writes. Values in settings
// (or Helm values) would land in the world-readable Nix store; a credential file does not.
import type { Settings } from '../settings/schema.ts';
import type { KubeObject } from '../steps/types.ts';
import { OWNER_LABEL } from '../adapters/kube.ts';
import { AGE_NAMESPACE } from './age-key.ts';

/** Fixed, so a changed repoURL updates the one Secret instead of leaving the old one behind. */
export const REPO_SECRET_NAME = 'repo-gitops';
/** How Argo CD finds repository credentials among Secrets in its namespace. */
export const REPO_SECRET_TYPE_LABEL = 'argocd.argoproj.io/secret-type';
export const DEFAULT_REPO_USERNAME = 'git';

export type RepoAuth = 'https' | 'ssh';

export interface RepoCredentialDesired {
  namespace: string;
  name: string;
  url: string;
  /** What the URL asks for: a token (HTTPS basic auth) or an SSH private key. */
  auth: RepoAuth;
  /** HTTPS only. */
  username?: string;
  /** Where the credential comes from, for messages and `render` (never the credential). */
  source: string;
}

export class RepoCredentialError extends Error {
  override name = 'RepoCredentialError';
}

/** ssh://host/path or scp-like user@host:path is SSH; http(s):// is a token. */
export function repoAuthOf(url: string): RepoAuth | undefined {
  if (/^https?:\/\//i.test(url)) return 'https';
  if (/^ssh:\/\//i.test(url) || /^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:/.test(url)) return 'ssh';
  return undefined;
}

export function desiredRepoCredential(settings: Settings): RepoCredentialDesired {
  const { repoURL: url, repoCredentialFile, repoUsername } = settings.gitops;
  if (!repoCredentialFile) throw new RepoCredentialError('$.gitops.repoCredentialFile is not set; the repo-credential step needs it');
  const auth = repoAuthOf(url);
  if (!auth) {
    throw new RepoCredentialError(
      `$.gitops.repoURL ${url} is neither an HTTPS URL (https://host/owner/repo.git, with a token) nor an SSH URL (git@host:owner/repo.git or ssh://..., with a private key)`,
    );
  }
  return {
    namespace: AGE_NAMESPACE,
    name: REPO_SECRET_NAME,
    url,
    auth,
    ...(auth === 'https' ? { username: repoUsername ?? DEFAULT_REPO_USERNAME } : {}),
    source: repoCredentialFile,
  };
}

const SSH_PRIVATE_KEY = /-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----/;

/**
 * The credential's value as Argo CD wants it, checked against what the URL needs. Errors name
 * the settings fields and what to do, never the content.
 */
export function credentialValue(want: RepoCredentialDesired, text: string): string {
  const isKey = SSH_PRIVATE_KEY.test(text);
  const where = `the git-repo-credential ${want.source} ($.gitops.repoCredentialFile)`;
  if (want.auth === 'ssh') {
    if (!isKey) throw new RepoCredentialError(`${where} is not an SSH private key (no "-----BEGIN ... PRIVATE KEY-----" line), but $.gitops.repoURL is an SSH URL; give the private key, or an HTTPS URL for a token`);
    // ssh private keys must end with a newline, or libssh2/x/crypto reject them.
    return text.endsWith('\n') ? text : `${text}\n`;
  }
  if (isKey) throw new RepoCredentialError(`${where} holds an SSH private key, but $.gitops.repoURL is an HTTPS URL; use the repository's SSH URL (git@host:owner/repo.git) or give a token`);
  const token = text.trim();
  if (/\s/.test(token)) throw new RepoCredentialError(`${where} must hold one token on one line (found whitespace inside it)`);
  return token;
}

const b64 = (s: string) => Buffer.from(s, 'utf8').toString('base64');

/** The Secret as applied; `value` is the credential (token or key) from credentialValue(). */
export function repoSecretObject(want: RepoCredentialDesired, value: string): KubeObject {
  const data: Record<string, string> = { type: b64('git'), url: b64(want.url) };
  if (want.auth === 'https') Object.assign(data, { username: b64(want.username ?? DEFAULT_REPO_USERNAME), password: b64(value) });
  else data.sshPrivateKey = b64(value);
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name: want.name, namespace: want.namespace, labels: { ...OWNER_LABEL, [REPO_SECRET_TYPE_LABEL]: 'repository' } },
    type: 'Opaque',
    data,
  };
}

/** The Secret as `render` shows it: the credential is a reference, not its value. */
export function renderedRepoSecret(want: RepoCredentialDesired): KubeObject {
  const { data: _data, ...rest } = repoSecretObject(want, '');
  const ref = `<credential git-repo-credential: ${want.source}>`;
  const stringData: Record<string, string> = { type: 'git', url: want.url };
  if (want.auth === 'https') Object.assign(stringData, { username: want.username ?? DEFAULT_REPO_USERNAME, password: ref });
  else stringData.sshPrivateKey = ref;
  return { ...rest, stringData };
}

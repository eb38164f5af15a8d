// Argo CD repository Secret argocd/repo-gitops from the git-repo-credential (an HTTPS token or
// an SSH private key), so Argo CD can read a private gitops.repoURL. Read fresh every run (a
// rotated token is picked up by the next run) and written only when it differs. The credential
// never appears in a Change, log line or error: the diff redacts Secret data.
import { applyDiff, describeTakeovers, takeovers } from '../adapters/kube.ts';
import { isSecretDataPath, namespaceObject } from '../desired/age-key.ts';
import {
  credentialValue,
  desiredRepoCredential,
  renderedRepoSecret,
  repoSecretObject,
  type RepoCredentialDesired,
} from '../desired/repo-credential.ts';
import { Secret } from '../secret.ts';
import type { Settings } from '../settings/schema.ts';
import { warnIfExposed } from './preflight.ts';
import type { Change, FieldDiff, KubeObject, Rendered, Step, StepContext } from './types.ts';

export interface RepoCredentialHave {
  namespaceExists: boolean;
  secretExists: boolean;
  /** applyDiff of the desired Secret on the current one, Secret data redacted. */
  diff: FieldDiff[];
  /** The token or key as Argo CD wants it; prints as [redacted], only change() reveals it. */
  value: Secret;
  current?: KubeObject;
  /** Whose change (`argocd repo add`, kubectl) the write overwrites. */
  takenFrom?: string;
}

const secretTarget = (w: RepoCredentialDesired) => `Secret ${w.namespace}/${w.name}`;
const namespaceTarget = (w: RepoCredentialDesired) => `Namespace ${w.namespace}`;

export const repoCredentialStep: Step<RepoCredentialDesired, RepoCredentialHave> = {
  name: 'repo-credential',
  // age-key makes the argocd namespace; Argo CD reads repository Secrets whenever they appear,
  // so this need not wait for the chart.
  needs: ['age-key'],
  timeoutMs: 60_000,
  enabled(settings: Settings): boolean {
    return settings.gitops.repoCredentialFile !== undefined;
  },
  want(settings: Settings): RepoCredentialDesired {
    return desiredRepoCredential(settings);
  },
  async have(ctx: StepContext, want: RepoCredentialDesired): Promise<RepoCredentialHave> {
    const raw = await ctx.credentials.read('git-repo-credential');
    await warnIfExposed(ctx.credentials, 'git-repo-credential', ctx.log);
    const value = new Secret(credentialValue(want, raw.reveal()));
    const kube = ctx.adapters.kube;
    const namespaceExists = (await kube.get('v1', 'Namespace', want.namespace)) !== undefined;
    const current = namespaceExists ? await kube.get('v1', 'Secret', want.name, want.namespace) : undefined;
    const desired = repoSecretObject(want, value.reveal());
    const diff = applyDiff(desired, current, { redact: isSecretDataPath });
    const taken = diff.length > 0 ? takeovers(desired, current) : [];
    return { namespaceExists, secretExists: current !== undefined, diff, value, ...(current ? { current } : {}), ...(taken.length > 0 ? { takenFrom: describeTakeovers(taken) } : {}) };
  },
  changes(want: RepoCredentialDesired, have: RepoCredentialHave): Change[] {
    const out: Change[] = [];
    if (!have.namespaceExists) out.push({ action: 'create', target: namespaceTarget(want) });
    if (!have.secretExists) out.push({ action: 'create', target: secretTarget(want), diff: have.diff });
    else if (have.diff.length > 0) {
      const detail = [`the Secret differs from gitops.repoURL or ${want.source}`, ...(have.takenFrom ? [have.takenFrom] : [])].join('; ');
      out.push({ action: 'update', target: secretTarget(want), diff: have.diff, detail });
    }
    else out.push({ action: 'noop', target: secretTarget(want) });
    return out;
  },
  async change(ctx: StepContext, changes: Change[], want: RepoCredentialDesired, have: RepoCredentialHave): Promise<void> {
    const kube = ctx.adapters.kube;
    if (changes.some((c) => c.target === namespaceTarget(want) && c.action === 'create')) await kube.apply(namespaceObject(want.namespace));
    if (changes.some((c) => c.target === secretTarget(want) && (c.action === 'create' || c.action === 'update'))) {
      // force: a Secret made by hand or by `argocd repo add` under this name is replaced by the file's truth.
      await kube.apply(repoSecretObject(want, have.value.reveal()), { force: true, current: have.current });
    }
  },
  rendered(want: RepoCredentialDesired): Partial<Rendered> {
    return { objects: [renderedRepoSecret(want)] };
  },
};

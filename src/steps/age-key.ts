// Namespace argocd + Secret sops-age-key (key keys.txt) from the host's age key credential.
// Read fresh every run, so a rotated key file is picked up by the next run; written only
// when the content (or our labels) differ. The key never appears in a Change, log or error.
import { applyDiff, describeTakeovers, takeovers } from '../adapters/kube.ts';
import { parseAgeIdentities } from '../agekey.ts';
import type { Secret } from '../secret.ts';
import {
  ageSecretObject,
  desiredAgeKey,
  isSecretDataPath,
  namespaceObject,
  renderedAgeSecret,
  type AgeKeyDesired,
} from '../desired/age-key.ts';
import type { Settings } from '../settings/schema.ts';
import type { Change, FieldDiff, KubeObject, Rendered, Step, StepContext } from './types.ts';

export interface AgeKeyHave {
  namespaceExists: boolean;
  secretExists: boolean;
  /** applyDiff of the desired Secret on the current one, Secret data redacted. */
  diff: FieldDiff[];
  /** Prints as [redacted]; only change() reveals it, to write it. */
  key: Secret;
  /** The Secret as read (with managedFields), for the forced apply's log. */
  current?: KubeObject | undefined;
  /** Whose changes (another field manager's) the write takes back, when any. */
  takenFrom?: string;
}

const secretTarget = (w: AgeKeyDesired) => `Secret ${w.namespace}/${w.name}`;
const namespaceTarget = (w: AgeKeyDesired) => `Namespace ${w.namespace}`;
const toBase64 = (key: Secret) => Buffer.from(key.reveal(), 'utf8').toString('base64');

export const ageKeyStep: Step<AgeKeyDesired, AgeKeyHave> = {
  name: 'age-key',
  needs: ['preflight'],
  timeoutMs: 60_000,
  want(settings: Settings): AgeKeyDesired {
    return desiredAgeKey(settings.sops.ageKeyFile);
  },
  async have(ctx: StepContext, want: AgeKeyDesired): Promise<AgeKeyHave> {
    const key = await ctx.credentials.read('age-key');
    // Checked again here (preflight did too): the file may have been rotated in between, and a
    // broken key in the cluster breaks every sops decryption.
    await parseAgeIdentities(key.reveal(), `${ctx.credentials.path('age-key')} (${ctx.credentials.field('age-key')})`);
    const kube = ctx.adapters.kube;
    const namespaceExists = (await kube.get('v1', 'Namespace', want.namespace)) !== undefined;
    const current = namespaceExists ? await kube.get('v1', 'Secret', want.name, want.namespace) : undefined;
    const desired = ageSecretObject(want, toBase64(key));
    const diff = applyDiff(desired, current, { redact: isSecretDataPath });
    const taken = diff.length > 0 ? takeovers(desired, current) : [];
    return { namespaceExists, secretExists: current !== undefined, diff, key, current, ...(taken.length > 0 ? { takenFrom: describeTakeovers(taken) } : {}) };
  },
  changes(want: AgeKeyDesired, have: AgeKeyHave): Change[] {
    const out: Change[] = [];
    if (!have.namespaceExists) out.push({ action: 'create', target: namespaceTarget(want) });
    if (!have.secretExists) out.push({ action: 'create', target: secretTarget(want), diff: have.diff });
    else if (have.diff.length > 0) {
      const rotated = have.diff.some((d) => isSecretDataPath(d.path));
      const details = [...(rotated ? [`the key in ${want.source} differs from the Secret (rotated?)`] : []), ...(have.takenFrom ? [have.takenFrom] : [])];
      out.push({ action: 'update', target: secretTarget(want), diff: have.diff, ...(details.length > 0 ? { detail: details.join('; ') } : {}) });
    } else out.push({ action: 'noop', target: secretTarget(want) });
    return out;
  },
  async change(ctx: StepContext, changes: Change[], want: AgeKeyDesired, have: AgeKeyHave): Promise<void> {
    const kube = ctx.adapters.kube;
    if (changes.some((c) => c.target === namespaceTarget(want) && c.action === 'create')) await kube.apply(namespaceObject(want.namespace));
    if (changes.some((c) => c.target === secretTarget(want) && (c.action === 'create' || c.action === 'update'))) {
      // force: an older setup (the plan's kubectl unit) may own the data; the key file is the truth.
      await kube.apply(ageSecretObject(want, toBase64(have.key)), { force: true, current: have.current });
    }
  },
  rendered(want: AgeKeyDesired): Partial<Rendered> {
    return { objects: [renderedAgeSecret(want)] };
  },
};

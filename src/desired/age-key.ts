// The Secret that hands the host's age identity to the Argo CD repo-server (ksops/sops). Pure:
// the key itself is only ever passed in by the step, at the moment it writes.
import type { KubeObject } from '../steps/types.ts';
import { OWNER_LABEL } from '../adapters/kube.ts';

export const AGE_NAMESPACE = 'argocd';
export const AGE_SECRET_NAME = 'sops-age-key';
/** The file name inside the Secret; the argocd step mounts it and points SOPS_AGE_KEY_FILE at it. */
export const AGE_SECRET_KEY = 'keys.txt';

export interface AgeKeyDesired {
  namespace: string;
  name: string;
  key: string;
  /** Where the key comes from, for messages and `render` (never the key). */
  source: string;
}

export function desiredAgeKey(ageKeyFile: string): AgeKeyDesired {
  return { namespace: AGE_NAMESPACE, name: AGE_SECRET_NAME, key: AGE_SECRET_KEY, source: ageKeyFile };
}

export function namespaceObject(name: string): KubeObject {
  return { apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels: { ...OWNER_LABEL } } };
}

/** The Secret as applied. `base64` is the key file's content, base64-encoded. */
export function ageSecretObject(want: AgeKeyDesired, base64: string): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name: want.name, namespace: want.namespace, labels: { ...OWNER_LABEL } },
    type: 'Opaque',
    data: { [want.key]: base64 },
  };
}

/** The Secret as `render` shows it: the value is a reference to the credential, not the key. */
export function renderedAgeSecret(want: AgeKeyDesired): KubeObject {
  const { data: _data, ...rest } = ageSecretObject(want, '');
  return { ...rest, stringData: { [want.key]: `<credential age-key: ${want.source}>` } };
}

/** Redacts Secret data in field diffs. */
export const isSecretDataPath = (path: string): boolean => path === '$.data' || path.startsWith('$.data.') || path.startsWith('$.data[') || path.startsWith('$.stringData');

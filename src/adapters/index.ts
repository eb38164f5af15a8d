// The only doors to the outside world. Each is created on first use, so `render` and
// `validate-config` never open a connection or read a credential.
import type { Logger } from 'pino';
import type { Settings } from '../settings/schema.ts';
import type { Credentials } from '../credentials.ts';
import { KubeClient } from './kube.ts';
import { Helm } from './helm.ts';
import { CloudflareClient } from './cloudflare.ts';

export interface Adapters {
  readonly kube: KubeClient;
  readonly helm: Helm;
  readonly cloudflare: CloudflareClient;
}

export function createAdapters(settings: Settings, credentials: Credentials, log: Logger): Adapters {
  let kube: KubeClient | undefined;
  let helm: Helm | undefined;
  let cloudflare: CloudflareClient | undefined;
  return {
    get kube() {
      return (kube ??= new KubeClient(credentials.path('kubeconfig'), log));
    },
    get helm() {
      return (helm ??= new Helm(credentials.path('kubeconfig'), log));
    },
    get cloudflare() {
      return (cloudflare ??= new CloudflareClient(settings, credentials, log));
    },
  };
}

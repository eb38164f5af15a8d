// The only doors to the outside world. Each is created on first use, so `render` and
// `validate-config` never open a connection or read a credential.
import type { Logger } from 'pino';
import type { Settings } from '../settings/schema.ts';
import type { Credentials } from '../credentials.ts';
import { KubeClient } from './kube.ts';
import { Helm } from './helm.ts';
import { CloudflareClient } from './cloudflare.ts';
import { memoryReleaseMemo, stateDirReleaseMemo, type ReleaseMemo } from './release-memo.ts';

export interface Adapters {
  readonly kube: KubeClient;
  readonly helm: Helm;
  readonly cloudflare: CloudflareClient;
  /** What Helm's release records said when last decoded; kept in the state directory when there is one. */
  readonly releaseMemo: ReleaseMemo;
}

export function createAdapters(settings: Settings, credentials: Credentials, log: Logger, opts: { stateDir?: string } = {}): Adapters {
  let kube: KubeClient | undefined;
  let helm: Helm | undefined;
  let cloudflare: CloudflareClient | undefined;
  const releaseMemo = opts.stateDir ? stateDirReleaseMemo(opts.stateDir) : memoryReleaseMemo();
  return {
    releaseMemo,
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

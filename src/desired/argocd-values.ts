// Helm values for the argo-cd chart (10.x): the ksops repo-server patch, the age key mount,
// plain HTTP behind the Cilium ingress. The user's `argocd.values` are deep-merged on top.
import type { Settings } from '../settings/schema.ts';
import { DEFAULTS } from '../settings/schema.ts';
import { fqdn } from '../settings/names.ts';
import { deepMerge, type JsonObject } from './merge.ts';
// The Secret the age-key step writes: one definition, so the mount cannot name another one.
import { AGE_SECRET_KEY, AGE_SECRET_NAME } from './age-key.ts';
// The class of Cilium's ingress controller, which the cilium values turn on.
import { INGRESS_CLASS } from './cilium-values.ts';

/** sops' own default lookup is $XDG_CONFIG_HOME/sops/age/keys.txt; the mount matches it too. */
export const XDG_CONFIG_HOME = '/.config';
export const AGE_KEY_DIR = `${XDG_CONFIG_HOME}/sops/age`;
export const AGE_KEY_FILE = `${AGE_KEY_DIR}/${AGE_SECRET_KEY}`;

export const CUSTOM_TOOLS_DIR = '/custom-tools';
// The image is distroless since ksops v4.4: no shell, so no `sh -c cp …`; ksops copies itself
// into the shared emptyDir. Without --with-kustomize: that would also copy the kustomize ksops was
// built with over Argo CD's own, and kustomize up to 5.7 runs `helm version -c`, which the Helm 4
// of Argo CD >= 3.5 rejects (every --enable-helm build would fail). The ksops README calls
// replacing kustomize optional; Argo CD's kustomize runs exec KRM functions such as ksops itself.
export const KSOPS_INSTALL_COMMAND = ['/usr/local/bin/ksops', 'install', CUSTOM_TOOLS_DIR];
/** Where ksops lands in the repo-server: on its PATH, so `exec: {path: ksops}` resolves. */
export const KSOPS_PATH = '/usr/local/bin/ksops';

// ksops needs exec plugins enabled; --enable-helm lets GitOps apps use kustomize helmCharts.
export const KUSTOMIZE_BUILD_OPTIONS = '--enable-alpha-plugins --enable-exec --enable-helm';

export function argocdHost(settings: Settings): string {
  return fqdn(settings.argocd.hostname, settings.domain);
}

/** The generated values, before the user's overrides. */
export function generatedArgocdValues(settings: Settings, ksopsImage: string = DEFAULTS.ksopsImage): JsonObject {
  const host = argocdHost(settings);
  return {
    // global.domain is also the Ingress host (server.ingress.hostname defaults to it) and the
    // URL in argocd-cm, so the UI's links and the Ingress cannot disagree.
    global: { domain: host },
    configs: {
      // TLS ends at Cloudflare or at the Cilium ingress; the server itself speaks HTTP.
      params: { 'server.insecure': true },
      cm: { 'kustomize.buildOptions': KUSTOMIZE_BUILD_OPTIONS },
    },
    server: {
      ingress: { enabled: true, ingressClassName: INGRESS_CLASS },
    },
    // The ksops README's values for the argo-cd chart ("Argo CD Helm Chart with Custom Tooling"),
    // minus its optional kustomize override: one subPath mount puts ksops at /usr/local/bin, which
    // is on PATH, so `exec: {path: ksops}` in a generator resolves, and /usr/local/bin/kustomize
    // stays the image's own. The KRM exec plugin needs no KUSTOMIZE_PLUGIN_HOME (that was the
    // legacy plugin layout).
    repoServer: {
      env: [
        { name: 'XDG_CONFIG_HOME', value: XDG_CONFIG_HOME },
        { name: 'SOPS_AGE_KEY_FILE', value: AGE_KEY_FILE },
      ],
      volumes: [
        { name: 'custom-tools', emptyDir: {} },
        { name: 'sops-age', secret: { secretName: AGE_SECRET_NAME, items: [{ key: AGE_SECRET_KEY, path: AGE_SECRET_KEY }] } },
      ],
      initContainers: [
        {
          name: 'install-ksops',
          image: ksopsImage,
          command: [...KSOPS_INSTALL_COMMAND],
          volumeMounts: [{ mountPath: CUSTOM_TOOLS_DIR, name: 'custom-tools' }],
        },
      ],
      volumeMounts: [
        { mountPath: KSOPS_PATH, name: 'custom-tools', subPath: 'ksops' },
        { mountPath: AGE_KEY_DIR, name: 'sops-age', readOnly: true },
      ],
    },
  };
}

/** What is installed: generated values with `argocd.values` deep-merged over them. */
export function argocdValues(settings: Settings): JsonObject {
  return deepMerge(generatedArgocdValues(settings), settings.argocd.values);
}

// The Cloudflare tunnel: find-or-create it by name (remotely managed), put its ingress rules,
// and hand its token to cloudflared as Secret cloudflared/tunnel-token.
//
// The Cloudflare part needs no cluster, so the step needs no other step: when the cluster is
// down the tunnel is still made and its id still reaches DNS. Only the Secret needs the
// cluster; if writing it fails, the step fails *after* the Cloudflare work with a
// PartialStepError that carries the outputs (see the class).
import { PartialStepError } from '../engine/errors.ts';
import type { Change, KubeObject, Outputs, Step, StepContext } from './types.ts';
import { describeTakeovers, OWNER_LABEL, takeovers } from '../adapters/kube.ts';
import { oldestTunnel, type ApiIngressRule, type Tunnel } from '../adapters/cloudflare.ts';
import { desiredTunnel, ingressDiff, TUNNEL_SECRET, type TunnelWant } from '../desired/tunnel.ts';
import { Secret } from '../secret.ts';

export { PartialStepError };

export type SecretState =
  | { known: true; exists: boolean; matches: boolean; namespaceExists: boolean; object?: KubeObject; detail?: string }
  | { known: false; error: string; cause?: unknown };

export interface TunnelHave {
  tunnel: Tunnel | undefined;
  /** Other live tunnels with the same name (made by hand or by another tool). */
  duplicates: string[];
  ingress: ApiIngressRule[] | null;
  token: Secret | undefined;
  secret: SecretState;
}

const changeKey = (c: Change): string => `${c.action} ${c.target}`;
const message = (e: unknown): string => (e instanceof Error ? e.message : String(e));
const secretTarget = `Secret ${TUNNEL_SECRET.namespace}/${TUNNEL_SECRET.name}`;
const namespaceTarget = `Namespace ${TUNNEL_SECRET.namespace}`;
const tunnelTarget = (w: TunnelWant) => `Cloudflare tunnel ${w.name}`;
const ingressTarget = (w: TunnelWant) => `Cloudflare tunnel ${w.name} ingress`;

function secretObject(token: Secret): KubeObject {
  const encoded = Buffer.from(token.reveal()).toString('base64');
  new Secret(encoded); // registers the base64 form too, so it is scrubbed from any log line
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name: TUNNEL_SECRET.name, namespace: TUNNEL_SECRET.namespace, labels: { ...OWNER_LABEL } },
    type: 'Opaque',
    data: { [TUNNEL_SECRET.key]: encoded },
  };
}

async function readSecret(ctx: StepContext, token: Secret | undefined): Promise<SecretState> {
  try {
    const kube = ctx.adapters.kube;
    const obj = await kube.get('v1', 'Secret', TUNNEL_SECRET.name, TUNNEL_SECRET.namespace);
    if (!obj) {
      const ns = await kube.get('v1', 'Namespace', TUNNEL_SECRET.namespace);
      return { known: true, exists: false, matches: false, namespaceExists: ns !== undefined };
    }
    const data = (obj.data as Record<string, string> | undefined)?.[TUNNEL_SECRET.key];
    const matches = token !== undefined && data !== undefined && token.equals(Buffer.from(data, 'base64'));
    // Made by hand before the first run, or edited since (kubectl create/apply/patch/edit): say whose change the write overwrites.
    const taken = token && !matches ? takeovers(secretObject(token), obj) : [];
    return { known: true, exists: true, matches, namespaceExists: true, object: obj, ...(taken.length > 0 ? { detail: describeTakeovers(taken) } : {}) };
  } catch (e) {
    return { known: false, error: message(e), cause: e };
  }
}

export const tunnelStep: Step<TunnelWant, TunnelHave> = {
  name: 'tunnel',
  needs: [],
  enabled: (settings) => settings.cloudflare !== undefined,

  want: (settings) => desiredTunnel(settings),

  async have(ctx, want) {
    const cf = ctx.adapters.cloudflare;
    const all = await cf.findTunnels(want.name, ctx.signal);
    const tunnel = oldestTunnel(all);
    const duplicates = all.filter((t) => t.id !== tunnel?.id).map((t) => t.id);
    if (duplicates.length > 0) {
      ctx.log.warn({ tunnel: want.name, using: tunnel?.id, duplicates }, `${duplicates.length + 1} live tunnels are named ${want.name}; using the oldest (${tunnel?.id}) and leaving the others alone`);
    }
    let ingress: ApiIngressRule[] | null = null;
    let token: Secret | undefined;
    if (tunnel) {
      if (tunnel.configSrc === 'cloudflare') ingress = await cf.getTunnelIngress(tunnel.id, ctx.signal);
      token = await cf.getTunnelToken(tunnel.id, ctx.signal);
    }
    const secret = await readSecret(ctx, token);
    return { tunnel, duplicates, ingress, token, secret };
  },

  changes(want, have) {
    const out: Change[] = [];
    const t = have.tunnel;
    if (!t) {
      out.push({ action: 'create', target: tunnelTarget(want), detail: 'remotely managed (config_src: cloudflare)' });
      out.push({ action: 'create', target: ingressTarget(want), diff: ingressDiff(want.ingress, null) });
    } else if (t.configSrc !== 'cloudflare') {
      out.push({
        action: 'conflict',
        target: tunnelTarget(want),
        detail: `tunnel ${want.name} (${t.id}) is locally managed (config_src: local), so its ingress rules cannot be set through the API; migrate it to remote management in the Zero Trust dashboard, or set cloudflare.tunnelName to a new name`,
      });
    } else {
      out.push({ action: 'noop', target: tunnelTarget(want) });
      const diff = ingressDiff(want.ingress, have.ingress);
      out.push(diff.length > 0 ? { action: 'update', target: ingressTarget(want), diff } : { action: 'noop', target: ingressTarget(want) });
    }

    const s = have.secret;
    if (!s.known) {
      out.push({ action: 'wait', target: secretTarget, detail: `the cluster did not answer (${s.error}); the token is written once it does` });
    } else if (!s.exists) {
      if (!s.namespaceExists) out.push({ action: 'create', target: namespaceTarget });
      out.push({ action: 'create', target: secretTarget, diff: [{ path: `$.data.${TUNNEL_SECRET.key}`, to: '[redacted]' }] });
    } else if (!t || !s.matches) {
      out.push({ action: 'update', target: secretTarget, diff: [{ path: `$.data.${TUNNEL_SECRET.key}`, from: '[redacted]', to: '[redacted]' }], ...(s.detail ? { detail: s.detail } : {}) });
    } else {
      out.push({ action: 'noop', target: secretTarget });
    }
    return out;
  },

  async change(ctx, changes, want, have) {
    const cf = ctx.adapters.cloudflare;
    const requested = new Set(changes.map(changeKey));
    const conflict = changes.find((c) => c.action === 'conflict');
    if (conflict) throw new Error(conflict.detail ?? `${conflict.target}: conflict`);

    let tunnel = have.tunnel;
    let token = have.token;
    if (!tunnel) {
      const r = await cf.ensureTunnel(want.name, ctx.signal);
      tunnel = r.tunnel;
      token = undefined;
      ctx.log.info({ tunnel: want.name, id: tunnel.id }, r.created ? `created tunnel ${want.name} (${tunnel.id})` : `tunnel ${want.name} (${tunnel.id}) already existed`);
    }
    if (requested.has(`create ${ingressTarget(want)}`) || requested.has(`update ${ingressTarget(want)}`)) {
      await cf.putTunnelIngress(tunnel.id, want.ingress, ctx.signal);
      ctx.log.info({ tunnel: want.name, rules: want.ingress.length }, `wrote ${want.ingress.length} ingress rules of tunnel ${want.name}`);
    }
    const outputs: Outputs = { tunnelId: tunnel.id };

    const secretWork = changes.some((c) => (c.target === secretTarget || c.target === namespaceTarget) && c.action !== 'noop');
    if (!secretWork) return outputs;
    try {
      token ??= await cf.getTunnelToken(tunnel.id, ctx.signal);
      // Read again: after a 'wait' the cluster may answer now, and a fresh tunnel has a fresh token.
      const s = await readSecret(ctx, token);
      if (!s.known) throw s.cause ?? new Error(s.error);
      if (s.exists && s.matches) return outputs;
      const kube = ctx.adapters.kube;
      if (!s.namespaceExists) {
        await kube.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: TUNNEL_SECRET.namespace, labels: { ...OWNER_LABEL } } });
        ctx.log.info(`created ${namespaceTarget}`);
      }
      // force: the Secret is the daemon's; a hand-made or edited copy must not block it forever (409).
      await kube.apply(secretObject(token), { force: true, current: s.object });
      ctx.log.info(`${s.exists ? 'updated' : 'created'} ${secretTarget} (token of tunnel ${want.name})`);
    } catch (e) {
      throw new PartialStepError(`tunnel ${want.name} (${tunnel.id}) is in place, but ${secretTarget} was not written: ${message(e)}`, outputs, e);
    }
    return outputs;
  },

  outputs: (_want, have) => (have.tunnel ? { tunnelId: have.tunnel.id } : {}),

  rendered(want) {
    return {
      tunnel: { name: want.name, ingress: want.ingress },
      objects: [
        { apiVersion: 'v1', kind: 'Namespace', metadata: { name: TUNNEL_SECRET.namespace, labels: { ...OWNER_LABEL } } },
        {
          apiVersion: 'v1',
          kind: 'Secret',
          metadata: { name: TUNNEL_SECRET.name, namespace: TUNNEL_SECRET.namespace, labels: { ...OWNER_LABEL } },
          type: 'Opaque',
          data: { [TUNNEL_SECRET.key]: `<token of Cloudflare tunnel ${want.name}>` },
        },
      ],
    };
  },
};

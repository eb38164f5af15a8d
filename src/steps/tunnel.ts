// The Cloudflare tunnel: find-or-create it by name (remotely managed), put its ingress rules,
// and hand its token to cloudflared as Secret cloudflared/tunnel-token. It also tells what it
// sees and does not manage: how many cloudflared connectors the tunnel has, and other tunnels
// of the account that still serve traffic (the old setup's), which it never deletes.
//
// The Cloudflare part needs no cluster, so the step needs no other step: when the cluster is
// down the tunnel is still made and its id still reaches DNS. Only the Secret needs the
// cluster; if writing it fails, the step fails *after* the Cloudflare work with a
// PartialStepError that carries the outputs (see the class).
import { PartialStepError } from '../engine/errors.ts';
import type { Change, KubeObject, Outputs, Step, StepContext } from './types.ts';
import { describeTakeovers, OWNER_LABEL, takeovers } from '../adapters/kube.ts';
import { oldestTunnel, type Tunnel, type TunnelConfig } from '../adapters/cloudflare.ts';
import { connectorNote, desiredTunnel, EXPECTED_CONNECTORS, ingressDiff, otherTunnelNote, tokenIsFor, TUNNEL_SECRET, type TunnelWant } from '../desired/tunnel.ts';
import { Secret } from '../secret.ts';

export { PartialStepError };

export type SecretState =
  | { known: true; exists: boolean; matches: boolean; namespaceExists: boolean; object?: KubeObject; detail?: string }
  | { known: false; error: string; cause?: unknown };

export interface TunnelHave {
  tunnel: Tunnel | undefined;
  /** Other live tunnels with the same name (made by hand or by another tool). */
  duplicates: string[];
  /** Live tunnels of other names that still have connectors, e.g. the old setup's hand-made one. */
  others: Tunnel[];
  /** The whole remote configuration (null: never configured); a PUT keeps all of it but the ingress. */
  config: TunnelConfig | null;
  /** Fetched only when the Secret cannot be trusted as it is (see have()). */
  token: Secret | undefined;
  secret: SecretState;
}

type SecretRead = { known: true; exists: boolean; namespaceExists: boolean; stored: Secret | undefined; object?: KubeObject } | { known: false; error: string; cause?: unknown };

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

async function readSecret(ctx: StepContext): Promise<SecretRead> {
  try {
    const kube = ctx.adapters.kube;
    const obj = await kube.get('v1', 'Secret', TUNNEL_SECRET.name, TUNNEL_SECRET.namespace);
    if (!obj) {
      const ns = await kube.get('v1', 'Namespace', TUNNEL_SECRET.namespace);
      return { known: true, exists: false, namespaceExists: ns !== undefined, stored: undefined };
    }
    const data = (obj.data as Record<string, string> | undefined)?.[TUNNEL_SECRET.key];
    return { known: true, exists: true, namespaceExists: true, object: obj, stored: data === undefined ? undefined : new Secret(Buffer.from(data, 'base64').toString('utf8')) };
  } catch (e) {
    return { known: false, error: message(e), cause: e };
  }
}

const sameToken = (token: Secret | undefined, stored: Secret | undefined): boolean => token !== undefined && stored !== undefined && token.equals(stored.reveal());

export const tunnelStep: Step<TunnelWant, TunnelHave> = {
  name: 'tunnel',
  needs: [],
  enabled: (settings) => settings.cloudflare !== undefined,

  want: (settings) => desiredTunnel(settings),

  async have(ctx, want) {
    const cf = ctx.adapters.cloudflare;
    // One list of the whole account finds the tunnel and the other tunnels; a live one whose list entry has no connections costs one more GET for its connectors.
    const all = await cf.listTunnels(ctx.signal);
    const named = all.filter((t) => t.name === want.name);
    const tunnel = oldestTunnel(named);
    const duplicates = named.filter((t) => t.id !== tunnel?.id).map((t) => t.id);
    if (duplicates.length > 0) {
      ctx.log.warn({ tunnel: want.name, using: tunnel?.id, duplicates }, `${duplicates.length + 1} live tunnels are named ${want.name}; using the oldest (${tunnel?.id}) and leaving the others alone`);
    }
    const others = all.filter((t) => t.name !== want.name && t.connectors > 0);
    for (const o of others) ctx.log.warn({ tunnel: o.name, id: o.id, connectors: o.connectors }, otherTunnelNote(o, want.name));
    // No connector on a tunnel that never had one is a fresh setup (Argo CD has yet to start cloudflared).
    const worrying = tunnel && (tunnel.connectors > EXPECTED_CONNECTORS || (tunnel.connectors === 0 && tunnel.status !== 'inactive'));
    if (tunnel) ctx.log[worrying ? 'warn' : 'info']({ tunnel: want.name, connectors: tunnel.connectors, status: tunnel.status }, connectorNote(want.name, tunnel));

    const config = tunnel?.configSrc === 'cloudflare' ? await cf.getTunnelConfig(tunnel.id, ctx.signal) : null;
    const read = await readSecret(ctx);
    let token: Secret | undefined;
    let secret: SecretState;
    if (!read.known) secret = read;
    else {
      // The token is {account, tunnel id, tunnel secret}: a Secret naming this tunnel is trusted
      // without asking Cloudflare, unless the tunnel lost its connectors (a rotated tunnel
      // secret is one way to get there). Anything else is compared with the token itself.
      let matches = false;
      if (tunnel && read.stored) {
        if (tokenIsFor(read.stored.reveal(), want.accountId, tunnel.id) && tunnel.status !== 'down') matches = true;
        else {
          token = await cf.getTunnelToken(tunnel.id, ctx.signal);
          matches = sameToken(token, read.stored);
        }
      }
      // Made by hand before the first run, or edited since (kubectl create/apply/patch/edit): say whose change the write overwrites.
      const taken = token && read.object && !matches ? takeovers(secretObject(token), read.object) : [];
      secret = { known: true, exists: read.exists, matches, namespaceExists: read.namespaceExists, ...(read.object ? { object: read.object } : {}), ...(taken.length > 0 ? { detail: describeTakeovers(taken) } : {}) };
    }
    return { tunnel, duplicates, others, config, token, secret };
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
      const diff = ingressDiff(want.ingress, have.config?.ingress);
      out.push(diff.length > 0 ? { action: 'update', target: ingressTarget(want), diff } : { action: 'noop', target: ingressTarget(want) });
    }

    const s = have.secret;
    if (!s.known) {
      out.push({ action: 'wait', target: secretTarget, detail: `the cluster did not answer (${s.error}); the token is written once it does` });
    } else if (!s.exists) {
      if (!s.namespaceExists) out.push({ action: 'create', target: namespaceTarget });
      out.push({ action: 'create', target: secretTarget, diff: [{ path: `$.data.${TUNNEL_SECRET.key}`, to: '[redacted]' }] });
    } else if (!t || !s.matches) {
      out.push({ action: 'update', target: secretTarget, diff: [{ path: `$.data.${TUNNEL_SECRET.key}`, from: '[redacted]', to: '[redacted]' }], ...(s.known && s.detail ? { detail: s.detail } : {}) });
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
      // A tunnel just created has no configuration to keep.
      await cf.putTunnelIngress(tunnel.id, want.ingress, have.tunnel ? have.config : null, ctx.signal);
      ctx.log.info({ tunnel: want.name, rules: want.ingress.length }, `wrote ${want.ingress.length} ingress rules of tunnel ${want.name}`);
    }
    const outputs: Outputs = { tunnelId: tunnel.id };

    const secretWork = changes.some((c) => (c.target === secretTarget || c.target === namespaceTarget) && c.action !== 'noop');
    if (!secretWork) return outputs;
    try {
      token ??= await cf.getTunnelToken(tunnel.id, ctx.signal);
      // Read again: after a 'wait' the cluster may answer now, and a fresh tunnel has a fresh token.
      const s = await readSecret(ctx);
      if (!s.known) throw s.cause ?? new Error(s.error);
      if (s.exists && sameToken(token, s.stored)) return outputs;
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

  notes: (want, have) => [...(have.tunnel ? [connectorNote(want.name, have.tunnel)] : []), ...have.others.map((o) => otherTunnelNote(o, want.name))],

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

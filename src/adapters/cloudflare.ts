// Thin adapter over the official `cloudflare` SDK (v7): the only code that talks to the
// Cloudflare API. It turns SDK errors into what the engine understands (TransientError for
// what may clear by itself, a sentence naming the missing token permission for 403) and makes
// creates safe to repeat: a create whose answer was lost may still have happened, so it is
// followed by a re-list instead of a blind second POST.
// The SDK is loaded on first use: importing it takes over a second, and `render` or
// `validate-config` never call Cloudflare.
import type { APIError } from 'cloudflare/core/error';
import type { CloudflareSdk as Cloudflare } from './cloudflare-sdk.ts';
import type { Logger } from 'pino';
import type { Settings } from '../settings/schema.ts';
import type { Credentials } from '../credentials.ts';
import type { DnsRecordSpec, TunnelIngressRule } from '../steps/types.ts';
import { TransientError } from '../engine/errors.ts';
import { Secret } from '../secret.ts';

/** The token permissions, as the Cloudflare dashboard names them. */
export const PERMISSIONS = {
  tunnel: 'Account › Cloudflare Tunnel › Edit',
  dns: 'Zone › DNS › Edit',
  zone: 'Zone › Zone › Read',
} as const;
export type PermissionKey = keyof typeof PERMISSIONS;

/** "Already exists" answers to a DNS create: A/AAAA/CNAME on the name, record exists, identical record. */
export const ALREADY_EXISTS_CODES: ReadonlySet<number> = new Set([81053, 81057, 81058]);
const RECORD_NOT_FOUND = 81044;
const TUNNEL_NAME_TAKEN = 1013;
// What Cloudflare answers for a token it does not accept at all (as opposed to one that lacks a permission).
const INVALID_TOKEN_CODES = new Set([1000, 6003, 6111, 9106, 9109]);

const DNS_PAGE = 5000; // the API allows up to 5,000,000; a homelab zone fits in one page
const TUNNEL_PAGE = 100;

export interface DnsRecord {
  id: string;
  type: string;
  name: string; // lowercase FQDN
  content: string;
  proxied: boolean;
  ttl: number;
  comment: string | null;
}

export interface Tunnel {
  id: string;
  name: string;
  createdAt: string;
  configSrc: 'local' | 'cloudflare';
  /** Running cloudflared processes: distinct connector ids in the list's connections, else from the connections endpoint (see listTunnels). */
  connectors: number;
  /** inactive (never ran), healthy, degraded, down (ran before, no connection now). */
  status: string;
}

/** A remotely-managed tunnel's whole configuration: ingress plus settings made elsewhere (warp-routing, originRequest). */
export interface TunnelConfig {
  ingress?: ApiIngressRule[];
  [key: string]: unknown;
}

/** An ingress rule as the API returns it (it adds `originRequest: {}` to every rule). */
export interface ApiIngressRule {
  hostname?: string;
  path?: string;
  service: string;
  originRequest?: Record<string, unknown>;
}

export interface CloudflareClientOptions {
  /** Per-request bound; the SDK's default is a minute. */
  timeoutMs?: number;
  /** SDK retries of idempotent requests (GET/PUT/DELETE) on 5xx and connection errors. Creates never retry blindly. */
  maxRetries?: number;
  /** A 429 asking to wait at most this long is waited out inside the call; longer waits go to the engine. */
  maxInlineRetryAfterMs?: number;
  /** Test seam. */
  fetch?: typeof fetch;
}

/** A permanent Cloudflare answer (4xx other than 429): retrying the same request cannot help. */
export class CloudflareApiError extends Error {
  override name = 'CloudflareApiError';
  // Not `status`: the engine's isTransient() reads `status`, and e.g. a 409 here is final.
  readonly httpStatus: number | undefined;
  readonly codes: readonly number[];
  constructor(message: string, httpStatus: number | undefined, codes: readonly number[], cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.httpStatus = httpStatus;
    this.codes = codes;
  }
}

/** 429: nothing was carried out, so a create needs no re-list before it is tried again. */
export class RateLimitedError extends TransientError {
  override name = 'RateLimitedError';
}

/** The token is invalid or lacks a permission (403). */
export class CloudflarePermissionError extends CloudflareApiError {
  override name = 'CloudflarePermissionError';
}

interface RawRecord {
  id?: string;
  type?: string;
  name?: string;
  content?: string;
  proxied?: boolean;
  ttl?: number;
  comment?: string | null;
}

interface RawTunnel {
  id?: string;
  name?: string;
  created_at?: string;
  deleted_at?: string | null;
  config_src?: 'local' | 'cloudflare';
  remote_config?: boolean;
  status?: string;
  connections?: Array<{ client_id?: string; id?: string }> | null;
}

interface ListPage<T> {
  result: T[];
  result_info?: { page?: number; per_page?: number; total_pages?: number; total_count?: number; count?: number };
}

export function parseRetryAfter(value: string | null | undefined, nowMs = Date.now()): number | undefined {
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - nowMs);
}

const normContent = (type: string, content: string): string => (type === 'CNAME' ? content.toLowerCase().replace(/\.$/, '') : content);

function toRecord(r: RawRecord): DnsRecord {
  const type = r.type ?? '';
  return {
    id: r.id ?? '',
    type,
    name: (r.name ?? '').toLowerCase().replace(/\.$/, ''),
    content: normContent(type, r.content ?? ''),
    proxied: r.proxied === true,
    ttl: r.ttl ?? 1,
    comment: r.comment ?? null,
  };
}

/** Connector ids in the list's `connections` array: deprecated, and empty once Cloudflare stops filling it. */
const inlineConnectors = (t: RawTunnel): number => new Set((Array.isArray(t.connections) ? t.connections : []).map((c) => c.client_id ?? c.id ?? '')).size;

/** Statuses that mean cloudflared is connected now: only then is a connector count worth a request. */
const LIVE_STATUSES: ReadonlySet<string> = new Set(['healthy', 'degraded']);

function toTunnel(t: RawTunnel): Tunnel {
  const conns = Array.isArray(t.connections) ? t.connections : [];
  return {
    id: t.id ?? '',
    name: t.name ?? '',
    createdAt: t.created_at ?? '',
    // Tunnels of older accounts carry only remote_config.
    configSrc: t.config_src ?? (t.remote_config ? 'cloudflare' : 'local'),
    connectors: inlineConnectors(t),
    status: t.status ?? (conns.length > 0 ? 'healthy' : 'inactive'),
  };
}

/** The oldest tunnel of a name: the one every run settles on when duplicates exist. */
export function oldestTunnel(tunnels: readonly Tunnel[]): Tunnel | undefined {
  return [...tunnels].sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id))[0];
}

function errorCodes(err: APIError): number[] {
  return (err.errors ?? []).map((e) => e.code).filter((c): c is number => typeof c === 'number');
}

function errorText(err: APIError): string {
  const parts = (err.errors ?? []).map((e) => `${e.code} ${e.message}`);
  return parts.length > 0 ? parts.join('; ') : `HTTP ${err.status}`;
}

type SdkModule = typeof import('./cloudflare-sdk.ts');
let sdkModule: Promise<SdkModule> | undefined;
const loadSdk = (): Promise<SdkModule> => (sdkModule ??= import('./cloudflare-sdk.ts'));

export class CloudflareClient {
  readonly settings: Settings;
  readonly credentials: Credentials;
  readonly log: Logger;
  readonly #opts: Required<Omit<CloudflareClientOptions, 'fetch'>> & { fetch: typeof fetch };
  #sdk: Promise<Cloudflare> | undefined;
  /** Zone id → name, as found; for messages. */
  readonly #zoneNames = new Map<string, string>();
  #mod: SdkModule | undefined;

  constructor(settings: Settings, credentials: Credentials, log: Logger, opts: CloudflareClientOptions = {}) {
    this.settings = settings;
    this.credentials = credentials;
    this.log = log.child({ component: 'cloudflare' });
    this.#opts = {
      timeoutMs: opts.timeoutMs ?? 30_000,
      maxRetries: opts.maxRetries ?? 2,
      maxInlineRetryAfterMs: opts.maxInlineRetryAfterMs ?? 10_000,
      fetch: opts.fetch ?? globalThis.fetch,
    };
  }

  get #cf(): NonNullable<Settings['cloudflare']> {
    const cf = this.settings.cloudflare;
    if (!cf) throw new Error('settings have no cloudflare section');
    return cf;
  }

  get zoneName(): string {
    return (this.#cf.zone ?? this.settings.domain).toLowerCase().replace(/\.$/, '');
  }

  /** The SDK, built on first use: reading the token is the first thing that can fail. */
  #client(): Promise<Cloudflare> {
    this.#sdk ??= (async () => {
      const token = await this.credentials.read('cloudflare-api-token');
      const mod = (this.#mod = await loadSdk());
      const inner = this.#opts.fetch;
      const cap = this.#opts.maxInlineRetryAfterMs;
      // The SDK sleeps whatever retry-after says before retrying a 429, with no upper bound and
      // deaf to our abort signal. Long waits belong to the engine, which backs off abortably.
      const capped = async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
        const res = await inner(input, init);
        if (res.status !== 429) return res;
        const wait = parseRetryAfter(res.headers.get('retry-after'));
        if (wait !== undefined && wait <= cap) return res;
        const headers = new Headers(res.headers);
        headers.set('x-should-retry', 'false');
        return new Response(res.body, { status: res.status, statusText: res.statusText, headers });
      };
      const sdkLog = this.log.child({ component: 'cloudflare-sdk' });
      return mod.cloudflareSdk({
        apiToken: token.reveal().trim(),
        // Explicit nulls: the SDK would otherwise pick up CLOUDFLARE_API_KEY & co. from the environment.
        apiKey: null,
        apiEmail: null,
        userServiceKey: null,
        baseURL: this.#cf.apiBaseUrl,
        maxRetries: this.#opts.maxRetries,
        timeout: this.#opts.timeoutMs,
        fetch: capped,
        logLevel: 'warn',
        logger: {
          error: (msg: string) => sdkLog.error(msg),
          warn: (msg: string) => sdkLog.warn(msg),
          info: (msg: string) => sdkLog.info(msg),
          debug: (msg: string) => sdkLog.debug(msg),
        },
      });
    })();
    this.#sdk.catch(() => (this.#sdk = undefined)); // a fixed token file is picked up on the next call
    return this.#sdk;
  }

  /** `zoneId` names the zone in a permission error (a token may reach one zone and not another). */
  async #call<T>(what: string, perm: PermissionKey, fn: (c: Cloudflare) => Promise<T>, zoneId?: string): Promise<T> {
    const c = await this.#client();
    try {
      return await fn(c);
    } catch (err) {
      throw this.#mapError(err, what, perm, zoneId);
    }
  }

  #mapError(err: unknown, what: string, perm: PermissionKey, zoneId?: string): unknown {
    const { APIConnectionError, APIError, APIUserAbortError } = this.#mod!;
    if (err instanceof APIUserAbortError) return err;
    if (err instanceof APIConnectionError) {
      const why = /timed? ?out/i.test(`${err.message} ${String(err.cause ?? '')}`) ? 'timed out' : `connection failed (${(err.cause as Error | undefined)?.message ?? err.message})`;
      return new TransientError(`Cloudflare API ${this.#cf.apiBaseUrl}: ${what} ${why}`, { cause: err });
    }
    if (!(err instanceof APIError)) return err;
    const status = err.status;
    const codes = errorCodes(err);
    if (status === 429) {
      return new RateLimitedError(`Cloudflare rate limit (HTTP 429) while ${what}`, {
        cause: err,
        retryAfterMs: parseRetryAfter(err.headers?.get('retry-after')) ?? 60_000,
      });
    }
    if (status === undefined || status >= 500 || status === 408 || (status === 409 && !codes.includes(TUNNEL_NAME_TAKEN))) {
      return new TransientError(`Cloudflare API error while ${what} (HTTP ${status ?? '?'}: ${errorText(err)})`, { cause: err });
    }
    if (status === 401 || status === 403) {
      const source = `${this.credentials.path('cloudflare-api-token')} (${this.credentials.field('cloudflare-api-token')})`;
      const all = `${PERMISSIONS.tunnel}, ${PERMISSIONS.dns}, ${PERMISSIONS.zone}`;
      if (codes.some((c) => INVALID_TOKEN_CODES.has(c))) {
        return new CloudflarePermissionError(
          `Cloudflare rejected the API token from ${source} while ${what} (HTTP ${status}: ${errorText(err)}): the token is invalid, expired or revoked; create one with ${all}`,
          status,
          codes,
        );
      }
      const scope = perm === 'tunnel' ? `account ${this.#cf.accountId} ($.cloudflare.accountId)` : `zone ${(zoneId && this.#zoneNames.get(zoneId)) || this.zoneName}`;
      return new CloudflarePermissionError(
        `Cloudflare refused ${what} (HTTP ${status}: ${errorText(err)}): the API token from ${source} lacks the permission "${PERMISSIONS[perm]}" on ${scope}; the token needs ${all}`,
        status,
        codes,
      );
    }
    return new CloudflareApiError(`Cloudflare refused ${what} (HTTP ${status}: ${errorText(err)})`, status, codes, err);
  }

  async #pages<T>(fetchPage: (page: number) => Promise<ListPage<T>>, perPage: number): Promise<T[]> {
    // Paged by hand: the SDK's iterator asks for one more, empty, page after the last one.
    const out: T[] = [];
    for (let page = 1; ; page++) {
      const p = await fetchPage(page);
      out.push(...p.result);
      // total_pages is often absent (and undeclared in the schema): a short page, or having total_count, ends the list.
      const pages = p.result_info?.total_pages;
      const count = p.result_info?.total_count;
      const last = pages !== undefined ? page >= pages : p.result.length < perPage || (count !== undefined && out.length >= count);
      if (p.result.length === 0 || last) return out;
    }
  }

  // ---- zone ---------------------------------------------------------------------------------

  /** The zone `name` (default: cloudflare.zone or domain) in the account. */
  async findZone(zoneName?: string, signal?: AbortSignal): Promise<{ id: string; name: string }> {
    const name = zoneName === undefined ? this.zoneName : zoneName.toLowerCase().replace(/\.$/, '');
    // A configured id saves the lookup, and with it the need for Zone Read.
    if (this.#cf.zoneId && name === this.zoneName) {
      this.#zoneNames.set(this.#cf.zoneId, name);
      return { id: this.#cf.zoneId, name };
    }
    const what = `looking up zone ${name}`;
    const zones = await this.#call(what, 'zone', (c) => c.zones.list({ name, account: { id: this.#cf.accountId } }, { signal }));
    const z = zones.result.find((x) => x.name.toLowerCase() === name);
    if (!z) {
      throw new CloudflareApiError(
        `Cloudflare zone ${name} was not found in account ${this.#cf.accountId}: check ${name === this.zoneName ? '$.cloudflare.zone (or $.domain)' : 'the zone of the hosts in it ($.hosts[].zone)'} and $.cloudflare.accountId, and that the API token has "${PERMISSIONS.zone}" on the zone (without it Cloudflare lists no zones)`,
        200,
        [],
      );
    }
    this.#zoneNames.set(z.id, name);
    return { id: z.id, name };
  }

  // ---- DNS ----------------------------------------------------------------------------------

  /** Records of the zone, all of them or filtered server-side by comment prefix and/or exact name. */
  async listRecords(zoneId: string, filter: { commentStartsWith?: string; name?: string }, signal?: AbortSignal): Promise<DnsRecord[]> {
    const what = filter.name ? `listing DNS records of ${filter.name}` : 'listing DNS records';
    const raw = await this.#pages<RawRecord>(
      (page) =>
        this.#call(what, 'dns', async (c) => {
          const p = await c.dns.records.list(
            {
              zone_id: zoneId,
              ...(filter.commentStartsWith !== undefined ? { comment: { startswith: filter.commentStartsWith } } : {}),
              ...(filter.name !== undefined ? { name: { exact: filter.name } } : {}),
              page,
              per_page: DNS_PAGE,
            },
            { signal },
          );
          return { result: p.result as RawRecord[], result_info: p.result_info };
        }, zoneId),
      DNS_PAGE,
    );
    const records = raw.map(toRecord);
    // Cloudflare's comment filters ignore case; ownership is the exact marker.
    const prefix = filter.commentStartsWith;
    return prefix === undefined ? records : records.filter((r) => r.comment?.startsWith(prefix));
  }

  /**
   * Creates a record. The POST is never retried blindly: when its answer is lost (connection
   * reset, timeout, 5xx) or Cloudflare says it already exists (a previous attempt got through),
   * the name is listed again and a record equal to `spec` counts as created.
   */
  async createRecord(zoneId: string, spec: DnsRecordSpec, signal?: AbortSignal): Promise<DnsRecord> {
    const what = `creating DNS ${spec.type} ${spec.name}`;
    try {
      const r = await this.#call(what, 'dns', (c) =>
        c.dns.records.create(
          { zone_id: zoneId, type: spec.type, name: spec.name, content: spec.content, proxied: spec.proxied, ttl: spec.ttl, comment: spec.comment },
          { signal, maxRetries: 0 },
        ),
        zoneId,
      );
      return toRecord(r as RawRecord);
    } catch (err) {
      const exists = err instanceof CloudflareApiError && err.codes.some((c) => ALREADY_EXISTS_CODES.has(c));
      if (!(exists || (err instanceof TransientError && !(err instanceof RateLimitedError)))) throw err;
      const again = await this.listRecords(zoneId, { name: spec.name }, signal);
      const done = again.find(
        (r) => r.type === spec.type && r.name === spec.name && r.content === normContent(spec.type, spec.content) && r.comment === spec.comment,
      );
      if (done) {
        this.log.warn({ record: `${spec.type} ${spec.name}` }, `${what}: the answer was lost or it already existed; found it on re-list, continuing`);
        return done;
      }
      throw err;
    }
  }

  /** Overwrites a record (PUT): idempotent, so the SDK may retry it. */
  async updateRecord(zoneId: string, id: string, spec: DnsRecordSpec, signal?: AbortSignal): Promise<DnsRecord> {
    const r = await this.#call(`updating DNS ${spec.type} ${spec.name}`, 'dns', (c) =>
      c.dns.records.update(id, { zone_id: zoneId, type: spec.type, name: spec.name, content: spec.content, proxied: spec.proxied, ttl: spec.ttl, comment: spec.comment }, { signal }),
      zoneId,
    );
    return toRecord(r as RawRecord);
  }

  async deleteRecord(zoneId: string, record: { id: string; type: string; name: string }, signal?: AbortSignal): Promise<void> {
    try {
      await this.#call(`deleting DNS ${record.type} ${record.name}`, 'dns', (c) => c.dns.records.delete(record.id, { zone_id: zoneId }, { signal }), zoneId);
    } catch (err) {
      // Gone already: a retried DELETE whose first answer was lost.
      if (err instanceof CloudflareApiError && (err.codes.includes(RECORD_NOT_FOUND) || err.httpStatus === 404)) return;
      throw err;
    }
  }

  // ---- tunnel -------------------------------------------------------------------------------

  /** Every non-deleted tunnel of the account, with its connector count: the one to manage and the others worth reporting. */
  async listTunnels(signal?: AbortSignal): Promise<Tunnel[]> {
    const accountId = this.#cf.accountId;
    const raw = await this.#pages<RawTunnel>(
      (page) =>
        this.#call('listing the tunnels of the account', 'tunnel', async (c) => {
          const p = await c.zeroTrust.tunnels.cloudflared.list({ account_id: accountId, is_deleted: false, page, per_page: TUNNEL_PAGE }, { signal });
          return { result: p.result as RawTunnel[], result_info: p.result_info };
        }),
      TUNNEL_PAGE,
    );
    const tunnels = raw.filter((t) => !t.deleted_at).map(toTunnel);
    // The list's `connections` array is deprecated ("will start returning an empty array"): the
    // status stays the list's signal, and a live tunnel that lists no connections is asked directly.
    // While the array is still filled, that costs nothing more.
    for (const t of tunnels) {
      if (t.connectors === 0 && LIVE_STATUSES.has(t.status)) t.connectors = await this.countConnectors(t.id, signal);
    }
    return tunnels;
  }

  /** Running cloudflared processes of a tunnel: connectors holding at least one connection to the edge. */
  async countConnectors(tunnelId: string, signal?: AbortSignal): Promise<number> {
    const page = await this.#call(`reading the connections of tunnel ${tunnelId}`, 'tunnel', (c) =>
      c.zeroTrust.tunnels.cloudflared.connections.get(tunnelId, { account_id: this.#cf.accountId }, { signal }),
    );
    // `conns` is optional in the schema: a connector listed without it is still running.
    return page.result.filter((client) => !Array.isArray(client.conns) || client.conns.length > 0).length;
  }

  /** Non-deleted tunnels of the account with exactly this name. */
  async findTunnels(name: string, signal?: AbortSignal): Promise<Tunnel[]> {
    const accountId = this.#cf.accountId;
    const raw = await this.#pages<RawTunnel>(
      (page) =>
        this.#call(`listing tunnels named ${name}`, 'tunnel', async (c) => {
          const p = await c.zeroTrust.tunnels.cloudflared.list({ account_id: accountId, name, is_deleted: false, page, per_page: TUNNEL_PAGE }, { signal });
          return { result: p.result as RawTunnel[], result_info: p.result_info };
        }),
      TUNNEL_PAGE,
    );
    return raw.filter((t) => t.name === name && !t.deleted_at).map(toTunnel);
  }

  /**
   * Finds or creates the remotely-managed tunnel `name`, never leaving two: it lists before
   * creating, re-lists when the create's answer is lost or the name is taken, and after a
   * create re-lists again; if someone else created one concurrently, the oldest wins and the
   * one this call made is deleted again.
   */
  async ensureTunnel(name: string, signal?: AbortSignal): Promise<{ tunnel: Tunnel; created: boolean }> {
    const before = oldestTunnel(await this.findTunnels(name, signal));
    if (before) return { tunnel: before, created: false };
    const accountId = this.#cf.accountId;
    const what = `creating tunnel ${name}`;
    let mine: Tunnel;
    try {
      const t = await this.#call(what, 'tunnel', (c) => c.zeroTrust.tunnels.cloudflared.create({ account_id: accountId, name, config_src: 'cloudflare' }, { signal, maxRetries: 0 }));
      mine = toTunnel(t as RawTunnel);
    } catch (err) {
      const taken = err instanceof CloudflareApiError && err.codes.includes(TUNNEL_NAME_TAKEN);
      if (!(taken || (err instanceof TransientError && !(err instanceof RateLimitedError)))) throw err;
      const found = oldestTunnel(await this.findTunnels(name, signal));
      if (found) {
        this.log.warn({ tunnel: name }, `${what}: the answer was lost or the name was taken; found tunnel ${found.id} on re-list, continuing`);
        return { tunnel: found, created: false };
      }
      throw err;
    }
    const after = await this.findTunnels(name, signal);
    const winner = oldestTunnel(after.some((t) => t.id === mine.id) ? after : [...after, mine])!;
    if (winner.id !== mine.id) {
      this.log.warn({ tunnel: name }, `another tunnel named ${name} (${winner.id}) appeared while creating ${mine.id}; keeping the older one and deleting ${mine.id}`);
      await this.#call(`deleting duplicate tunnel ${mine.id}`, 'tunnel', (c) => c.zeroTrust.tunnels.cloudflared.delete(mine.id, { account_id: accountId }, { signal }));
      return { tunnel: winner, created: false };
    }
    return { tunnel: mine, created: true };
  }

  /** The remotely-managed configuration as the API returns it; null when none was ever put (the API answers `result: null`). */
  async getTunnelConfig(tunnelId: string, signal?: AbortSignal): Promise<TunnelConfig | null> {
    const res = await this.#call(`reading the configuration of tunnel ${tunnelId}`, 'tunnel', (c) =>
      c.zeroTrust.tunnels.cloudflared.configurations.get(tunnelId, { account_id: this.#cf.accountId }, { signal }),
    );
    const config = (res as { config?: unknown } | null | undefined)?.config;
    return config !== null && typeof config === 'object' && !Array.isArray(config) ? (config as TunnelConfig) : null;
  }

  /**
   * PUT replaces the whole configuration: `base` (the configuration read before) keeps the
   * settings made elsewhere, such as warp-routing or a top-level originRequest; only the
   * ingress rules are this daemon's.
   */
  async putTunnelIngress(tunnelId: string, ingress: readonly TunnelIngressRule[], base: TunnelConfig | null, signal?: AbortSignal): Promise<void> {
    const config = { ...(base ?? {}), ingress: ingress.map((r) => ({ ...r })) };
    await this.#call(`writing the ingress rules of tunnel ${tunnelId}`, 'tunnel', (c) =>
      // The SDK types every rule with a hostname; the catch-all rule has none by design.
      c.zeroTrust.tunnels.cloudflared.configurations.update(tunnelId, { account_id: this.#cf.accountId, config: config as { ingress: Array<{ hostname: string; service: string }> } }, { signal }),
    );
  }

  /** The token cloudflared runs with. Wrapped at once so it is scrubbed from every log line. */
  async getTunnelToken(tunnelId: string, signal?: AbortSignal): Promise<Secret> {
    const token = await this.#call(`reading the token of tunnel ${tunnelId}`, 'tunnel', (c) =>
      c.zeroTrust.tunnels.cloudflared.token.get(tunnelId, { account_id: this.#cf.accountId }, { signal }),
    );
    if (typeof token !== 'string' || token === '') throw new CloudflareApiError(`Cloudflare returned no token for tunnel ${tunnelId}`, 200, []);
    return new Secret(token);
  }
}

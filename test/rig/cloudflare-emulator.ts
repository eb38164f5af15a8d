// A local emulator of the Cloudflare v4 endpoints the daemon uses, strict about the rules the
// real API enforces (so the daemon cannot pass here and fail in production) and with switches
// to inject the faults the real API produces: 429 with retry-after, 5xx bursts, a write whose
// response is lost, slow answers. Everything is in memory; every request is logged.
//
// The URLs, query strings and bodies are the ones the official SDK v7 sends: filters in the
// query string use qs "allowDots" (`name.exact=…`, `comment.startswith=…`), pagination is
// `page`/`per_page` with `result_info`, the tunnel token result is a bare string, and the
// tunnel configuration body is `{config: {ingress: [...]}}`.
//
// Answers have the shapes production returns, including the ones a client must survive: tunnels
// of older accounts carry `remote_config` and no `config_src`, `result_info` has no
// `total_pages`, the configuration of a tunnel never configured is `result: null`, tunnel lists
// carry an empty (deprecated) `connections` array unless `inlineConnections`, and null
// timestamps are left out as the schema declares them. Unless `schema: false`, every request
// and answer is checked against Cloudflare's OpenAPI schema (./cloudflare-schema.ts): a request
// the schema rejects is answered 400, an answer it rejects becomes a 500, both say "schema
// violation" and are kept in `violations`, and stop() fails while any is left.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { randomBytes, randomUUID } from 'node:crypto';
import { isIPv4, isIPv6, type AddressInfo, type Socket } from 'node:net';

export type Permission = 'zone:read' | 'dns:read' | 'dns:edit' | 'tunnel:read' | 'tunnel:edit';
export const ALL_PERMISSIONS: readonly Permission[] = ['zone:read', 'dns:read', 'dns:edit', 'tunnel:read', 'tunnel:edit'];

export interface CfError {
  code: number;
  message: string;
  error_chain?: CfError[];
}

export interface EmulatorRecord {
  id: string;
  zone_id: string;
  zone_name: string;
  type: string;
  name: string;
  content: string;
  proxiable: boolean;
  proxied: boolean;
  ttl: number;
  priority?: number;
  data?: Record<string, unknown>;
  comment: string | null;
  tags: string[];
  settings: Record<string, unknown>;
  meta: Record<string, unknown>;
  created_on: string;
  modified_on: string;
}

export interface EmulatorZone {
  id: string;
  name: string;
  accountId: string;
  records: Map<string, EmulatorRecord>;
}

export interface IngressRule {
  hostname?: string;
  path?: string;
  service: string;
  originRequest?: Record<string, unknown>;
}

/** A running cloudflared: one connector keeps (usually four) connections to the edge. */
export interface EmulatorConnector {
  id: string;
  version: string;
  runAt: string;
  conns: Array<{ id: string; colo_name: string; opened_at: string; origin_ip: string; is_pending_reconnect: boolean }>;
}

export interface EmulatorTunnel {
  id: string;
  account_tag: string;
  name: string;
  created_at: string;
  deleted_at: string | null;
  config_src: 'local' | 'cloudflare';
  /** Older tunnels answer with `remote_config` only, no `config_src`. */
  remoteConfigOnly?: boolean;
  secret: string;
  config: { ingress: IngressRule[]; [k: string]: unknown } | null;
  version: number;
  configCreatedAt: string | null;
  connectors: EmulatorConnector[];
  connsActiveAt: string | null;
  connsInactiveAt: string | null;
}

export interface RequestRecord {
  seq: number;
  method: string;
  /** Path below the API root, e.g. `/zones/<id>/dns_records`. */
  path: string;
  /** The raw query string without `?`, exactly as sent. */
  search: string;
  query: Record<string, string>;
  body?: unknown;
  /** HTTP status answered, or what happened instead. */
  status: number | 'lost' | 'hung';
  at: number;
}

export interface FaultMatch {
  method?: string;
  /** Matched against the path below the API root. */
  path?: RegExp | string;
}

type Fault =
  | { kind: 'rateLimit'; remaining: number; retryAfterSeconds: number; match?: FaultMatch }
  | { kind: 'serverError'; remaining: number; status: number; html: boolean; match?: FaultMatch }
  | { kind: 'lose'; remaining: number; mode: 'destroy' | 'hang'; match?: FaultMatch }
  | { kind: 'slow'; remaining: number; ms: number; match?: FaultMatch };

export interface EmulatorOptions {
  host?: string;
  port?: number;
  accountId?: string;
  /** The bearer token accepted with every permission (unless `permissions` says otherwise). */
  token?: string;
  permissions?: readonly Permission[];
  zones?: ReadonlyArray<string | { name: string; id?: string }>;
  /**
   * The account-wide limit Cloudflare applies: past 1,200 requests in 5 minutes, every request
   * is answered 429 for the next 5 minutes (`blockMs`, default `windowMs`).
   */
  globalRateLimit?: { requests: number; windowMs: number; blockMs?: number } | false;
  /** Milliseconds since the epoch; a test seam for the rate limit. */
  clock?: () => number;
  /** Cloudflare's OpenAPI schema file to hold requests and answers to, or false. Default: ../shared/cloudflare/openapi-subset.json. */
  schema?: string | false;
  /**
   * Whether tunnel answers fill their `connections` array, as the API still does today. The SDK
   * marks it deprecated ("will start returning an empty array"; use the connections endpoint), so
   * the default is that future: `connections: []`, and only the status tells a live tunnel.
   */
  inlineConnections?: boolean;
}

/** What the emulator needs of ./cloudflare-schema.ts (loaded only when validation is on). */
interface SchemaChecker {
  declares(method: string, path: string): boolean;
  checkRequest(req: { method: string; path: string; query: Record<string, string>; body: unknown }): string[];
  checkResponse(res: { method: string; path: string; status: number; body: unknown }): string[];
}

const API_ROOT = '/client/v4';
const WRITE_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
const DNS_TYPES = new Set(['A', 'AAAA', 'CNAME', 'TXT', 'MX', 'CAA', 'NS']);
// What Cloudflare refuses to put beside a CNAME on one name; TXT, MX, CAA and the rest may share it.
const CNAME_EXCLUSIVE = new Set(['A', 'AAAA', 'CNAME', 'NS']);
const PROXIABLE = new Set(['A', 'AAAA', 'CNAME']);
const COMMENT_LIMIT = 100; // Free plan
const TAG_QUOTA = 0; // Free plan
const DNS_MAX_PER_PAGE = 5_000_000;
const TUNNEL_MAX_PER_PAGE = 1000;
const ZONE_MAX_PER_PAGE = 50;

class HttpError extends Error {
  readonly status: number;
  readonly errors: CfError[];
  constructor(status: number, ...errors: CfError[]) {
    super(errors.map((e) => `${e.code} ${e.message}`).join('; '));
    this.status = status;
    this.errors = errors;
  }
}

const hex32 = (): string => randomBytes(16).toString('hex');
const now = (): string => new Date().toISOString();

/** Cloudflare refuses to proxy what its edge cannot reach: private, loopback, link-local, CGNAT. */
export function isPrivateIPv4(ip: string): boolean {
  const [a = 0, b = 0] = ip.split('.').map(Number);
  return a === 10 || a === 127 || a === 0 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) || (a === 169 && b === 254) || (a === 100 && b >= 64 && b <= 127);
}

function matches(m: FaultMatch | undefined, method: string, path: string): boolean {
  if (!m) return true;
  if (m.method && m.method.toUpperCase() !== method) return false;
  if (m.path !== undefined) return typeof m.path === 'string' ? path === m.path || path.startsWith(m.path) : m.path.test(path);
  return true;
}

function strFilter(value: string, op: string, arg: string, caseInsensitive: boolean): boolean {
  const v = caseInsensitive ? value.toLowerCase() : value;
  const a = caseInsensitive ? arg.toLowerCase() : arg;
  switch (op) {
    case 'exact':
      return v === a;
    case 'contains':
      return v.includes(a);
    case 'startswith':
      return v.startsWith(a);
    case 'endswith':
      return v.endsWith(a);
    default:
      throw new HttpError(400, { code: 9106, message: `unknown filter operator "${op}"` });
  }
}

function pageOf<T>(items: T[], query: Record<string, string>, def: number, max: number, min = 1): { page: T[]; info: Record<string, number> } {
  const page = query.page === undefined ? 1 : Number(query.page);
  const perPage = query.per_page === undefined ? def : Number(query.per_page);
  if (!Number.isInteger(page) || page < 1) throw new HttpError(400, { code: 1004, message: 'page must be a positive integer' });
  if (!Number.isInteger(perPage) || perPage < min || perPage > max) {
    throw new HttpError(400, { code: 1004, message: `per_page must be an integer between ${min} and ${max}` });
  }
  const start = (page - 1) * perPage;
  const slice = items.slice(start, start + perPage);
  return {
    page: slice,
    // No total_pages: the schema's result_info has none, and production lists often lack it.
    info: { page, per_page: perPage, count: slice.length, total_count: items.length },
  };
}

export class CloudflareEmulator {
  readonly accountId: string;
  readonly zones = new Map<string, EmulatorZone>();
  readonly tunnels = new Map<string, EmulatorTunnel>();
  readonly requests: RequestRecord[] = [];
  readonly #tokens = new Map<string, Set<Permission>>();
  #faults: Fault[] = [];
  #server: Server | undefined;
  #sockets = new Set<Socket>();
  #timers = new Set<NodeJS.Timeout>();
  #seq = 0;
  #window: number[] = [];
  #blockedUntil = 0;
  readonly #globalLimit: { requests: number; windowMs: number; blockMs?: number } | false;
  readonly #clock: () => number;
  readonly #schemaFile: string | false | undefined;
  readonly #inlineConnections: boolean;
  #schema: SchemaChecker | undefined;
  /** Requests and answers the OpenAPI schema rejected (see the header). */
  readonly violations: string[] = [];
  baseUrl = '';

  constructor(opts: EmulatorOptions = {}) {
    this.accountId = opts.accountId ?? hex32();
    this.#globalLimit = opts.globalRateLimit ?? { requests: 1200, windowMs: 5 * 60_000 };
    this.#clock = opts.clock ?? Date.now;
    this.#schemaFile = opts.schema;
    this.#inlineConnections = opts.inlineConnections ?? false;
    if (opts.token) this.setToken(opts.token, opts.permissions ?? ALL_PERMISSIONS);
    for (const z of opts.zones ?? []) typeof z === 'string' ? this.addZone(z) : this.addZone(z.name, z.id);
  }

  static async start(opts: EmulatorOptions = {}): Promise<CloudflareEmulator> {
    const emu = new CloudflareEmulator(opts);
    await emu.listen(opts.port ?? 0, opts.host ?? '127.0.0.1');
    return emu;
  }

  async listen(port: number, host: string): Promise<void> {
    if (this.#schemaFile !== false && !this.#schema) {
      const { CloudflareSchema } = await import('./cloudflare-schema.ts');
      this.#schema = new CloudflareSchema(this.#schemaFile);
    }
    const server = createServer((req, res) => void this.#handle(req, res));
    server.on('connection', (s) => {
      this.#sockets.add(s);
      s.on('close', () => this.#sockets.delete(s));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    this.#server = server;
    const addr = server.address() as AddressInfo;
    const h = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
    this.baseUrl = `http://${h}:${addr.port}${API_ROOT}`;
  }

  async stop(): Promise<void> {
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
    for (const s of this.#sockets) s.destroy();
    const server = this.#server;
    this.#server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    if (this.violations.length > 0) {
      throw new Error(`Cloudflare emulator: ${this.violations.length} schema violation(s):\n${this.violations.join('\n')}`);
    }
  }

  /** Whether requests and answers are checked against the OpenAPI schema. */
  get validating(): boolean {
    return this.#schema !== undefined;
  }

  /** Hands over (and forgets) the violations so far, for tests that send a bad request on purpose. */
  takeViolations(): string[] {
    return this.violations.splice(0);
  }

  // ---- configuration -------------------------------------------------------------------

  setToken(token: string, permissions: readonly Permission[] = ALL_PERMISSIONS): void {
    this.#tokens.set(token, new Set(permissions));
  }

  removeToken(token: string): void {
    this.#tokens.delete(token);
  }

  addZone(name: string, id: string = hex32()): EmulatorZone {
    const zone: EmulatorZone = { id, name: name.toLowerCase(), accountId: this.accountId, records: new Map() };
    this.zones.set(id, zone);
    return zone;
  }

  zone(name: string): EmulatorZone {
    for (const z of this.zones.values()) if (z.name === name.toLowerCase()) return z;
    throw new Error(`emulator: no zone ${name}`);
  }

  /** Adds a record as a person in the dashboard would (its TTL "Auto" unless given): same validation as the API, not logged. */
  seedRecord(zoneName: string, input: Record<string, unknown>): EmulatorRecord {
    const zone = this.zone(zoneName);
    const rec = this.#buildRecord(zone, { ttl: 1, ...input }, undefined);
    zone.records.set(rec.id, rec);
    return rec;
  }

  records(zoneName: string): EmulatorRecord[] {
    return [...this.zone(zoneName).records.values()].map((r) => structuredClone(r));
  }

  /** A tunnel made elsewhere (dashboard, `cloudflared tunnel create`, an older account). Not logged. */
  seedTunnel(input: { name: string; configSrc?: 'local' | 'cloudflare'; remoteConfigOnly?: boolean; config?: EmulatorTunnel['config']; createdAt?: string }): EmulatorTunnel {
    const t = this.#createTunnel({ name: input.name, config_src: input.configSrc ?? 'cloudflare' });
    if (input.remoteConfigOnly) t.remoteConfigOnly = true;
    if (input.createdAt) t.created_at = input.createdAt;
    if (input.config) {
      t.config = structuredClone(input.config);
      t.version = 1;
      t.configCreatedAt = now();
    }
    return t;
  }

  /** A cloudflared starts with the tunnel's token: one more connector with `conns` connections. */
  connect(tunnelId: string, opts: { conns?: number; version?: string } = {}): string {
    const t = this.tunnels.get(tunnelId);
    if (!t) throw new Error(`emulator: no tunnel ${tunnelId}`);
    const at = now();
    const colos = ['ams01', 'fra06', 'ams08', 'fra10'];
    const connector: EmulatorConnector = {
      id: randomUUID(),
      version: opts.version ?? '2025.11.1',
      runAt: at,
      conns: Array.from({ length: opts.conns ?? 4 }, (_, i) => ({ id: randomUUID(), colo_name: colos[i % colos.length]!, opened_at: at, origin_ip: '198.51.100.7', is_pending_reconnect: false })),
    };
    t.connectors.push(connector);
    t.connsActiveAt ??= at;
    return connector.id;
  }

  /** That cloudflared stops (all of them without an id). */
  disconnect(tunnelId: string, connectorId?: string): void {
    const t = this.tunnels.get(tunnelId);
    if (!t) throw new Error(`emulator: no tunnel ${tunnelId}`);
    t.connectors = connectorId ? t.connectors.filter((c) => c.id !== connectorId) : [];
    if (t.connectors.length === 0) t.connsInactiveAt = now();
  }

  liveTunnels(): EmulatorTunnel[] {
    return [...this.tunnels.values()].filter((t) => !t.deleted_at).map((t) => structuredClone(t));
  }

  tunnelToken(id: string): string {
    const t = this.tunnels.get(id);
    if (!t) throw new Error(`emulator: no tunnel ${id}`);
    return Buffer.from(JSON.stringify({ a: t.account_tag, t: t.id, s: t.secret })).toString('base64');
  }

  // ---- request log ------------------------------------------------------------------------

  resetLog(): void {
    this.requests.length = 0;
  }

  writes(): RequestRecord[] {
    return this.requests.filter((r) => WRITE_METHODS.has(r.method));
  }

  /** Counts by method, e.g. `{GET: 5, POST: 2}`. */
  countByMethod(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const r of this.requests) out[r.method] = (out[r.method] ?? 0) + 1;
    return out;
  }

  // ---- fault switches -----------------------------------------------------------------------

  /** The next `times` matching requests get 429 with `retry-after`, unprocessed. */
  rateLimit(times: number, opts: { retryAfterSeconds?: number; match?: FaultMatch } = {}): void {
    this.#faults.push({ kind: 'rateLimit', remaining: times, retryAfterSeconds: opts.retryAfterSeconds ?? 1, match: opts.match });
  }

  /** The next `times` matching requests get a 5xx, unprocessed; 502/504 come as the edge's HTML page. */
  serverErrors(times: number, opts: { status?: number; match?: FaultMatch } = {}): void {
    const status = opts.status ?? 500;
    this.#faults.push({ kind: 'serverError', remaining: times, status, html: status === 502 || status === 504, match: opts.match });
  }

  /**
   * The next `times` matching requests are carried out, but their response never arrives:
   * `destroy` resets the connection, `hang` keeps it open without answering (a client timeout).
   */
  loseResponse(opts: { times?: number; mode?: 'destroy' | 'hang'; match?: FaultMatch } = {}): void {
    this.#faults.push({ kind: 'lose', remaining: opts.times ?? 1, mode: opts.mode ?? 'destroy', match: opts.match });
  }

  /** Matching responses are delayed by `ms` (after the request was carried out). */
  slow(ms: number, opts: { times?: number; match?: FaultMatch } = {}): void {
    this.#faults.push({ kind: 'slow', remaining: opts.times ?? Infinity, ms, match: opts.match });
  }

  clearFaults(): void {
    this.#faults = [];
  }

  #takeFault<K extends Fault['kind']>(kind: K, method: string, path: string): Extract<Fault, { kind: K }> | undefined {
    const f = this.#faults.find((x) => x.kind === kind && x.remaining > 0 && matches(x.match, method, path));
    if (!f) return undefined;
    f.remaining--;
    if (f.remaining <= 0) this.#faults = this.#faults.filter((x) => x !== f);
    return f as Extract<Fault, { kind: K }>;
  }

  // ---- HTTP ---------------------------------------------------------------------------------

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = (req.method ?? 'GET').toUpperCase();
    const url = new URL(req.url ?? '/', 'http://emulator');
    const rawBody = await readBody(req);
    if (url.pathname.startsWith('/__emulator/')) return this.#admin(method, url, rawBody, res);

    const path = url.pathname.startsWith(API_ROOT) ? url.pathname.slice(API_ROOT.length) || '/' : url.pathname;
    const query: Record<string, string> = {};
    for (const [k, v] of url.searchParams) query[k] = v;
    const entry: RequestRecord = { seq: ++this.#seq, method, path, search: url.search.replace(/^\?/, ''), query, status: 0, at: this.#clock() };
    this.requests.push(entry);

    let status: number;
    let payload: unknown;
    try {
      if (!url.pathname.startsWith(API_ROOT)) throw new HttpError(404, { code: 7000, message: 'No route for that URI' });
      const limited = this.#takeFault('rateLimit', method, path) ?? this.#overGlobalLimit();
      if (limited) {
        entry.status = 429;
        // The rate limiter sits in front of the API: its answer (code 971) is not an operation's, so it is not schema-checked.
        return this.#send(res, 429, { success: false, errors: [{ code: 971, message: 'Please wait and consider throttling your request speed' }], messages: [], result: null }, { 'retry-after': String(limited.retryAfterSeconds) });
      }
      const err5xx = this.#takeFault('serverError', method, path);
      if (err5xx) {
        entry.status = err5xx.status;
        if (err5xx.html) return this.#sendHtml(res, err5xx.status, `<html><head><title>${err5xx.status} Bad Gateway</title></head><body><center><h1>${err5xx.status} Bad Gateway</h1></center><hr><center>cloudflare</center></body></html>`);
        return this.#send(res, err5xx.status, { success: false, errors: [{ code: 10001, message: 'Internal server error' }], messages: [], result: null });
      }
      let body: unknown = undefined;
      if (rawBody.length > 0) {
        try {
          body = JSON.parse(rawBody);
        } catch {
          throw new HttpError(400, { code: 9207, message: 'Request body is invalid.' });
        }
      }
      entry.body = body;
      const bad = this.#schema?.checkRequest({ method, path, query, body }) ?? [];
      if (bad.length > 0) {
        this.#violation(`request #${entry.seq}`, bad);
        // An operation the schema does not know still gets the API's own answer (404, 7000).
        if (this.#schema!.declares(method, path)) throw new HttpError(400, ...bad.map((m) => ({ code: 9207, message: `schema violation: ${m}` })));
      }
      const perms = this.#authenticate(req);
      const out = this.#route(method, path, query, body, perms);
      status = out.status ?? 200;
      payload = { success: true, errors: [], messages: [], result: out.result, ...(out.resultInfo ? { result_info: out.resultInfo } : {}) };
    } catch (e) {
      if (e instanceof HttpError) {
        status = e.status;
        payload = { success: false, errors: e.errors, messages: [], result: null };
      } else {
        status = 500;
        payload = { success: false, errors: [{ code: 10001, message: `emulator bug: ${(e as Error).message}` }], messages: [], result: null };
      }
    }
    const wrong = this.#schema?.checkResponse({ method, path, status, body: payload }) ?? [];
    if (wrong.length > 0) {
      this.#violation(`answer to request #${entry.seq}`, wrong);
      status = 500;
      payload = { success: false, errors: wrong.map((m) => ({ code: 10001, message: `emulator schema violation: ${m}` })), messages: [], result: null };
    }

    const lost = this.#takeFault('lose', method, path);
    if (lost) {
      entry.status = lost.mode === 'destroy' ? 'lost' : 'hung';
      if (lost.mode === 'destroy') req.socket.destroy();
      // 'hang': the socket stays open until the client gives up or the emulator stops.
      return;
    }
    const slow = this.#takeFault('slow', method, path);
    entry.status = status;
    if (slow) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          this.#timers.delete(t);
          resolve();
        }, slow.ms);
        this.#timers.add(t);
      });
    }
    this.#send(res, status, payload);
  }

  #violation(what: string, problems: string[]): void {
    for (const p of problems) this.violations.push(`schema violation (${what}): ${p}`);
  }

  #overGlobalLimit(): { retryAfterSeconds: number } | undefined {
    if (!this.#globalLimit) return undefined;
    const t = this.#clock();
    const { requests, windowMs, blockMs = windowMs } = this.#globalLimit;
    const retryAfter = () => ({ retryAfterSeconds: Math.max(1, Math.ceil((this.#blockedUntil - t) / 1000)) });
    if (t < this.#blockedUntil) return retryAfter();
    while (this.#window.length > 0 && this.#window[0]! <= t - windowMs) this.#window.shift();
    if (this.#window.length >= requests) {
      // Cloudflare blocks every request for the next five minutes, not just until the window slides.
      this.#blockedUntil = t + blockMs;
      this.#window = [];
      return retryAfter();
    }
    this.#window.push(t);
    return undefined;
  }

  #send(res: ServerResponse, status: number, payload: unknown, headers: Record<string, string> = {}): void {
    if (res.destroyed) return;
    const text = JSON.stringify(payload);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
    res.end(text);
  }

  #sendHtml(res: ServerResponse, status: number, html: string): void {
    if (res.destroyed) return;
    res.writeHead(status, { 'content-type': 'text/html', 'content-length': Buffer.byteLength(html) });
    res.end(html);
  }

  #authenticate(req: IncomingMessage): Set<Permission> {
    const auth = req.headers.authorization;
    const m = typeof auth === 'string' ? /^Bearer ([^\s]+)$/.exec(auth) : null;
    if (!m) {
      throw new HttpError(400, { code: 6003, message: 'Invalid request headers', error_chain: [{ code: 6111, message: 'Invalid format for Authorization header' }] });
    }
    const perms = this.#tokens.get(m[1]!);
    if (!perms) throw new HttpError(403, { code: 9109, message: 'Invalid access token' });
    return perms;
  }

  #route(method: string, path: string, query: Record<string, string>, body: unknown, perms: Set<Permission>): { status?: number; result: unknown; resultInfo?: Record<string, number> } {
    const seg = path.split('/').filter(Boolean);
    const need = (...any: Permission[]) => {
      if (!any.some((p) => perms.has(p))) throw new HttpError(403, { code: 10000, message: 'Authentication error' });
    };
    // /zones
    if (seg[0] === 'zones') {
      if (seg.length === 1 && method === 'GET') return this.#listZones(query, perms);
      const zone = this.zones.get(seg[1] ?? '');
      if (seg.length === 2 && method === 'GET') {
        need('zone:read');
        if (!zone) throw new HttpError(404, { code: 7003, message: 'Could not route to /zones/' + seg[1] + ', perhaps your object identifier is invalid?' });
        return { result: zoneView(zone) };
      }
      if (seg[2] === 'dns_records') {
        if (!zone) throw new HttpError(404, { code: 7003, message: `Could not route to /zones/${seg[1]}/dns_records, perhaps your object identifier is invalid?` });
        if (seg.length === 3 && method === 'GET') {
          need('dns:read', 'dns:edit');
          return this.#listRecords(zone, query);
        }
        if (seg.length === 3 && method === 'POST') {
          need('dns:edit');
          const rec = this.#buildRecord(zone, asObject(body), undefined);
          zone.records.set(rec.id, rec);
          return { result: recordView(rec) };
        }
        const id = seg[3] ?? '';
        if (seg.length === 4) {
          const existing = zone.records.get(id);
          if (method === 'GET') need('dns:read', 'dns:edit');
          else need('dns:edit');
          if (!existing) throw new HttpError(404, { code: 81044, message: 'Record does not exist.' });
          if (method === 'GET') return { result: recordView(existing) };
          if (method === 'DELETE') {
            zone.records.delete(id);
            return { result: { id } };
          }
          if (method === 'PUT' || method === 'PATCH') {
            const input = method === 'PUT' ? asObject(body) : { ...recordInput(existing), ...asObject(body) };
            const rec = this.#buildRecord(zone, input, existing);
            zone.records.set(id, rec);
            return { result: recordView(rec) };
          }
        }
      }
    }
    // /accounts/:account/cfd_tunnel
    if (seg[0] === 'accounts' && seg[2] === 'cfd_tunnel') {
      // A token scoped to other accounts is refused like a missing permission, as Cloudflare does.
      if (seg[1] !== this.accountId) throw new HttpError(403, { code: 10000, message: 'Authentication error' });
      if (seg.length === 3 && method === 'GET') {
        need('tunnel:read', 'tunnel:edit');
        return this.#listTunnels(query);
      }
      if (seg.length === 3 && method === 'POST') {
        need('tunnel:edit');
        return { result: this.#tunnelView(this.#createTunnel(asObject(body))) };
      }
      const t = this.tunnels.get(seg[3] ?? '');
      if (method === 'GET') need('tunnel:read', 'tunnel:edit');
      else need('tunnel:edit');
      if (!t || (t.deleted_at && seg.length > 4)) throw new HttpError(404, { code: 1003, message: 'Tunnel not found' });
      if (seg.length === 4 && method === 'GET') return { result: this.#tunnelView(t) };
      if (seg.length === 4 && method === 'DELETE') {
        if (!t.deleted_at) t.deleted_at = now();
        return { result: this.#tunnelView(t) };
      }
      if (seg.length === 5 && seg[4] === 'token' && method === 'GET') return { result: this.tunnelToken(t.id) };
      if (seg.length === 5 && seg[4] === 'connections' && method === 'GET') return { result: t.connectors.map(connectorView) };
      if (seg.length === 5 && seg[4] === 'configurations') {
        // A tunnel never configured answers `result: null`, not an empty configuration.
        if (method === 'GET') return { result: t.config === null ? null : configView(t) };
        if (method === 'PUT') return { result: this.#putConfig(t, body) };
      }
    }
    throw new HttpError(404, { code: 7000, message: 'No route for that URI' });
  }

  #listZones(query: Record<string, string>, perms: Set<Permission>) {
    // A token without Zone Read sees no zones at all: an empty list, not an error.
    let zones = perms.has('zone:read') ? [...this.zones.values()] : [];
    if (query.name !== undefined) zones = zones.filter((z) => z.name === query.name!.toLowerCase());
    if (query['account.id'] !== undefined) zones = zones.filter((z) => z.accountId === query['account.id']);
    const { page, info } = pageOf(zones, query, 20, ZONE_MAX_PER_PAGE, 5);
    return { result: page.map(zoneView), resultInfo: info };
  }

  #listRecords(zone: EmulatorZone, query: Record<string, string>) {
    const tests: Array<(r: EmulatorRecord) => boolean> = [];
    for (const [key, arg] of Object.entries(query)) {
      const [field, op] = key.split('.', 2) as [string, string | undefined];
      if (field === 'name') {
        const want = op ? arg : arg.toLowerCase().replace(/\.$/, '');
        tests.push((r) => strFilter(r.name, op ?? 'exact', want, true));
      } else if (field === 'content') {
        tests.push((r) => strFilter(r.content, op ?? 'exact', arg, true));
      } else if (field === 'comment') {
        if (op === 'present') tests.push((r) => r.comment !== null && r.comment !== '');
        else if (op === 'absent') tests.push((r) => r.comment === null || r.comment === '');
        // "Comment filters are case-insensitive" (the schema, on every comment.* parameter).
        else tests.push((r) => r.comment !== null && strFilter(r.comment, op ?? 'exact', arg, true));
      } else if (field === 'type') {
        tests.push((r) => r.type === arg.toUpperCase());
      } else if (field === 'proxied') {
        tests.push((r) => String(r.proxied) === arg);
      } else if (field === 'tag') {
        throw new HttpError(400, { code: 9300, message: 'DNS record tags are not available on this plan' });
      }
    }
    const any = query.match === 'any';
    const all = [...zone.records.values()].filter((r) => (tests.length === 0 ? true : any ? tests.some((t) => t(r)) : tests.every((t) => t(r))));
    const { page, info } = pageOf(all, query, 100, DNS_MAX_PER_PAGE);
    return { result: page.map(recordView), resultInfo: info };
  }

  /** Validates a create (existing undefined) or a full update exactly as the real API would. */
  #buildRecord(zone: EmulatorZone, input: Record<string, unknown>, existing: EmulatorRecord | undefined): EmulatorRecord {
    const type = typeof input.type === 'string' ? input.type.toUpperCase() : '';
    if (!DNS_TYPES.has(type)) throw new HttpError(400, { code: 9000, message: 'DNS record type is invalid.' });
    if (typeof input.name !== 'string' || input.name.trim() === '') throw new HttpError(400, { code: 9005, message: 'DNS name is invalid.' });
    let name = input.name.trim().toLowerCase().replace(/\.$/, '');
    if (name === '@') name = zone.name;
    else if (name !== zone.name && !name.endsWith(`.${zone.name}`)) name = `${name}.${zone.name}`;
    // CAA comes as structured `data`; the API derives its content from it.
    const caa = type === 'CAA' && input.data && typeof input.data === 'object' ? (input.data as Record<string, unknown>) : undefined;
    if (caa && (typeof caa.flags !== 'number' || typeof caa.tag !== 'string' || typeof caa.value !== 'string')) throw new HttpError(400, { code: 9007, message: 'Content for CAA record is invalid.' });
    if (caa) input = { ...input, content: `${caa.flags as number} ${caa.tag as string} "${caa.value as string}"` };
    if (typeof input.content !== 'string' || input.content === '') throw new HttpError(400, { code: 9007, message: `Content for ${type} record is invalid.` });
    let content = input.content;
    if (type === 'A' && !isIPv4(content)) throw new HttpError(400, { code: 9005, message: 'Content for A record must be a valid IPv4 address.' });
    if (type === 'AAAA' && !isIPv6(content)) throw new HttpError(400, { code: 9006, message: 'Content for AAAA record must be a valid IPv6 address.' });
    if (type === 'CNAME') {
      content = content.toLowerCase().replace(/\.$/, '');
      if (!/^[a-z0-9_*]([a-z0-9_-]*\.)*[a-z0-9-]+$/.test(content)) throw new HttpError(400, { code: 9007, message: 'Content for CNAME record is invalid.' });
      if (content === name) throw new HttpError(400, { code: 9039, message: 'CNAME content cannot reference itself.' });
    }
    if (input.proxied !== undefined && typeof input.proxied !== 'boolean') throw new HttpError(400, { code: 9003, message: "Invalid 'proxied' value, must be a boolean" });
    const proxied = input.proxied === true;
    if (proxied && !PROXIABLE.has(type)) throw new HttpError(400, { code: 9004, message: 'This record type cannot be proxied.' });
    if (proxied && type === 'A' && isPrivateIPv4(content)) {
      throw new HttpError(400, { code: 9003, message: `Invalid 'proxied' value: ${content} is a private IP address and cannot be proxied.` });
    }
    // No default: the API requires ttl on a create or a full update and answers a missing one
    // like a wrong one, 9021 (as ddns clients met it when Cloudflare began requiring it, 2020).
    const ttl = input.ttl;
    if (typeof ttl !== 'number' || !Number.isInteger(ttl) || (ttl !== 1 && (ttl < 60 || ttl > 86400))) {
      throw new HttpError(400, { code: 9021, message: 'Invalid TTL. Must be between 60 and 86400 seconds, or 1 for Automatic.' });
    }
    if (input.comment !== undefined && input.comment !== null && typeof input.comment !== 'string') throw new HttpError(400, { code: 9100, message: 'DNS record comment must be a string.' });
    const comment = typeof input.comment === 'string' && input.comment !== '' ? input.comment : null;
    if (comment !== null && comment.length > COMMENT_LIMIT) {
      throw new HttpError(400, { code: 9100, message: `DNS record has a comment that is ${comment.length} characters long, exceeding the limit of ${COMMENT_LIMIT}.` });
    }
    const tags = Array.isArray(input.tags) ? input.tags : [];
    if (tags.length > TAG_QUOTA) throw new HttpError(400, { code: 9300, message: `DNS record has ${tags.length} tags, exceeding the quota of ${TAG_QUOTA}.` });
    if (type === 'MX' && typeof input.priority !== 'number') throw new HttpError(400, { code: 9010, message: 'MX records require a priority.' });
    if (existing && existing.type !== type && (PROXIABLE.has(existing.type) || PROXIABLE.has(type))) {
      throw new HttpError(400, { code: 9000, message: `DNS record type cannot be changed from ${existing.type} to ${type}; delete the record and create a new one.` });
    }

    // The apex always carries the zone's NS records, and Cloudflare flattens a CNAME there: they do not exclude each other.
    const excludes = (t: string) => CNAME_EXCLUSIVE.has(t) && !(t === 'NS' && name === zone.name);
    const others = [...zone.records.values()].filter((r) => r.name === name && r.id !== existing?.id);
    if (type === 'CNAME' && others.some((r) => excludes(r.type))) {
      throw new HttpError(400, { code: 81053, message: 'An A, AAAA, or CNAME record with that host already exists.' });
    }
    if (excludes(type) && others.some((r) => r.type === 'CNAME')) {
      throw new HttpError(400, { code: 81054, message: 'A CNAME record with that host already exists.' });
    }
    if (others.some((r) => r.type === type && r.content === content)) throw new HttpError(400, { code: 81058, message: 'An identical record already exists.' });

    const t = now();
    return {
      id: existing?.id ?? hex32(),
      zone_id: zone.id,
      zone_name: zone.name,
      type,
      name,
      content,
      proxiable: PROXIABLE.has(type) && !(type === 'A' && isPrivateIPv4(content)),
      proxied,
      // Proxied records always read back as automatic TTL, whatever was sent.
      ttl: proxied ? 1 : ttl,
      ...(type === 'MX' ? { priority: input.priority as number } : {}),
      ...(caa ? { data: { flags: caa.flags, tag: caa.tag, value: caa.value } } : {}),
      comment,
      tags: [],
      settings: {},
      meta: {},
      created_on: existing?.created_on ?? t,
      modified_on: t,
    };
  }

  #listTunnels(query: Record<string, string>) {
    let ts = [...this.tunnels.values()];
    if (query.is_deleted === 'true') ts = ts.filter((t) => t.deleted_at);
    else if (query.is_deleted === 'false') ts = ts.filter((t) => !t.deleted_at);
    if (query.name !== undefined) ts = ts.filter((t) => t.name === query.name);
    if (query.uuid !== undefined) ts = ts.filter((t) => t.id === query.uuid);
    if (query.include_prefix !== undefined) ts = ts.filter((t) => t.name.startsWith(query.include_prefix!));
    if (query.exclude_prefix !== undefined) ts = ts.filter((t) => !t.name.startsWith(query.exclude_prefix!));
    const { page, info } = pageOf(ts, query, 20, TUNNEL_MAX_PER_PAGE);
    return { result: page.map((t) => this.#tunnelView(t)), resultInfo: info };
  }

  #tunnelView(t: EmulatorTunnel) {
    return tunnelView(t, this.#inlineConnections);
  }

  #createTunnel(input: Record<string, unknown>): EmulatorTunnel {
    if (typeof input.name !== 'string' || input.name.trim() === '') throw new HttpError(400, { code: 1002, message: 'tunnel name is required' });
    const configSrc = input.config_src ?? 'local';
    if (configSrc !== 'local' && configSrc !== 'cloudflare') throw new HttpError(400, { code: 1002, message: 'config_src must be "local" or "cloudflare"' });
    if ([...this.tunnels.values()].some((t) => !t.deleted_at && t.name === input.name)) {
      throw new HttpError(409, { code: 1013, message: 'You already have a tunnel with this name.' });
    }
    let secret: string;
    if (input.tunnel_secret !== undefined) {
      if (typeof input.tunnel_secret !== 'string' || Buffer.from(input.tunnel_secret, 'base64').length < 32) {
        throw new HttpError(400, { code: 1002, message: 'tunnel_secret must be at least 32 bytes, base64 encoded' });
      }
      secret = input.tunnel_secret;
    } else secret = randomBytes(32).toString('base64');
    const t: EmulatorTunnel = {
      id: randomUUID(),
      account_tag: this.accountId,
      name: input.name,
      created_at: now(),
      deleted_at: null,
      config_src: configSrc,
      secret,
      config: null,
      version: 0,
      configCreatedAt: null,
      connectors: [],
      connsActiveAt: null,
      connsInactiveAt: null,
    };
    this.tunnels.set(t.id, t);
    return t;
  }

  #putConfig(t: EmulatorTunnel, body: unknown) {
    if (t.config_src !== 'cloudflare') throw new HttpError(400, { code: 1055, message: 'This tunnel is managed locally (config_src: local); its configuration cannot be set through the API.' });
    const config = asObject(asObject(body).config);
    const ingress = config.ingress;
    if (!Array.isArray(ingress) || ingress.length === 0) throw new HttpError(400, { code: 1055, message: 'Failed to validate ingress rules: at least one ingress rule is required' });
    const rules: IngressRule[] = ingress.map((raw, i) => {
      const r = asObject(raw);
      if (typeof r.service !== 'string' || !/^(https?|tcp|ssh|rdp|smb|unix|unix\+tls|http_status):/.test(r.service) && r.service !== 'hello_world') {
        throw new HttpError(400, { code: 1055, message: `Failed to validate ingress rule ${i + 1}: service "${String(r.service)}" is not a valid origin` });
      }
      if (r.hostname !== undefined && (typeof r.hostname !== 'string' || r.hostname === '')) throw new HttpError(400, { code: 1055, message: `Failed to validate ingress rule ${i + 1}: hostname must be a non-empty string` });
      return {
        ...(r.hostname !== undefined ? { hostname: r.hostname as string } : {}),
        ...(typeof r.path === 'string' && r.path !== '' ? { path: r.path } : {}),
        service: r.service,
        originRequest: r.originRequest && typeof r.originRequest === 'object' ? (r.originRequest as Record<string, unknown>) : {},
      };
    });
    const last = rules[rules.length - 1]!;
    if (last.hostname !== undefined || last.path !== undefined) {
      throw new HttpError(400, { code: 1055, message: 'Failed to validate ingress rules: the last ingress rule must match all URLs (i.e. it should not have a hostname or path)' });
    }
    // PUT replaces the whole configuration: whatever else the body carries is kept, nothing of the old one.
    t.config = { 'warp-routing': { enabled: false }, ...config, ingress: rules };
    t.version++;
    t.configCreatedAt = now();
    return configView(t);
  }

  // ---- admin endpoints for the standalone emulator (VM tests, demo) ----------------------------

  #admin(method: string, url: URL, rawBody: string, res: ServerResponse): void {
    const reply = (status: number, body: unknown) => this.#send(res, status, body);
    const what = url.pathname.slice('/__emulator/'.length);
    try {
      const body = rawBody ? (JSON.parse(rawBody) as Record<string, unknown>) : {};
      if (what === 'requests' && method === 'GET') return reply(200, { requests: this.requests, writes: this.writes().length, byMethod: this.countByMethod(), violations: this.violations });
      if (what === 'requests' && method === 'DELETE') {
        this.resetLog();
        return reply(200, { ok: true });
      }
      if (what === 'state' && method === 'GET') {
        return reply(200, {
          accountId: this.accountId,
          zones: [...this.zones.values()].map((z) => ({ id: z.id, name: z.name, records: [...z.records.values()] })),
          tunnels: [...this.tunnels.values()].map((t) => ({ ...this.#tunnelView(t), config: t.config })),
        });
      }
      if (what === 'zones' && method === 'POST') return reply(200, zoneView(this.addZone(String(body.name), typeof body.id === 'string' ? body.id : undefined)));
      if (what === 'records' && method === 'POST') return reply(200, this.seedRecord(String(body.zone), asObject(body.record)));
      if (what === 'faults' && method === 'POST') {
        const times = typeof body.times === 'number' ? body.times : 1;
        const match = body.method || body.path ? { method: body.method as string | undefined, path: body.path as string | undefined } : undefined;
        if (body.kind === 'rateLimit') this.rateLimit(times, { retryAfterSeconds: Number(body.retryAfterSeconds ?? 1), match });
        else if (body.kind === 'serverError') this.serverErrors(times, { status: Number(body.status ?? 500), match });
        else if (body.kind === 'loseResponse') this.loseResponse({ times, mode: body.mode === 'hang' ? 'hang' : 'destroy', match });
        else if (body.kind === 'slow') this.slow(Number(body.ms ?? 1000), { times: typeof body.times === 'number' ? body.times : Infinity, match });
        else if (body.kind === 'clear') this.clearFaults();
        else return reply(400, { error: 'kind must be rateLimit, serverError, loseResponse, slow or clear' });
        return reply(200, { ok: true });
      }
      reply(404, { error: 'unknown emulator endpoint' });
    } catch (e) {
      reply(400, { error: e instanceof HttpError ? e.errors : (e as Error).message });
    }
  }
}

function asObject(v: unknown): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new HttpError(400, { code: 9207, message: 'Request body is invalid.' });
  return v as Record<string, unknown>;
}

function recordInput(r: EmulatorRecord): Record<string, unknown> {
  return { type: r.type, name: r.name, content: r.content, proxied: r.proxied, ttl: r.ttl, comment: r.comment, ...(r.priority !== undefined ? { priority: r.priority } : {}), ...(r.data !== undefined ? { data: r.data } : {}) };
}

const ZONE_EPOCH = '2024-01-01T00:00:00.000000Z';

function zoneView(z: EmulatorZone) {
  return {
    id: z.id,
    name: z.name,
    status: 'active',
    paused: false,
    type: 'full',
    account: { id: z.accountId, name: 'Homelab account' },
    plan: { id: '0feeeeeeeeeeeeeeeeeeeeeeeeeeeeee', name: 'Free Website', legacy_id: 'free' },
    name_servers: ['ada.ns.cloudflare.com', 'bob.ns.cloudflare.com'],
    development_mode: 0,
    owner: { type: 'user' },
    meta: { step: 2, custom_certificate_quota: 0, page_rule_quota: 3, phishing_detected: false },
    original_name_servers: null,
    original_registrar: null,
    original_dnshost: null,
    created_on: ZONE_EPOCH,
    modified_on: ZONE_EPOCH,
    activated_on: ZONE_EPOCH,
  };
}

/** A record as the API answers it: no `comment` key when there is none (the schema's comment is a string). */
function recordView(r: EmulatorRecord) {
  const { comment, ...rest } = r;
  return comment === null ? rest : { ...rest, comment };
}

function tunnelView(t: EmulatorTunnel, inlineConnections: boolean) {
  const live = t.connectors.length > 0;
  return {
    id: t.id,
    account_tag: t.account_tag,
    name: t.name,
    created_at: t.created_at,
    // Timestamps that are not set are absent (the schema declares them as strings).
    ...(t.deleted_at ? { deleted_at: t.deleted_at } : {}),
    connections: !inlineConnections ? [] : t.connectors.flatMap((c) => c.conns.map((x) => ({ ...x, uuid: x.id, client_id: c.id, client_version: c.version }))),
    ...(t.connsActiveAt ? { conns_active_at: t.connsActiveAt } : {}),
    ...(t.connsInactiveAt && !live ? { conns_inactive_at: t.connsInactiveAt } : {}),
    tun_type: 'cfd_tunnel',
    metadata: {},
    status: live ? 'healthy' : t.connsActiveAt ? 'down' : 'inactive',
    remote_config: t.config_src === 'cloudflare',
    ...(t.remoteConfigOnly ? {} : { config_src: t.config_src }),
  };
}

function connectorView(c: EmulatorConnector) {
  return { id: c.id, run_at: c.runAt, version: c.version, arch: 'linux_amd64', config_version: 0, features: ['serialized_headers', 'support_datagram_v3'], conns: c.conns.map((x) => ({ ...x, uuid: x.id, client_id: c.id, client_version: c.version })) };
}

function configView(t: EmulatorTunnel) {
  return { account_id: t.account_tag, tunnel_id: t.id, version: t.version, config: t.config, source: t.config_src, created_at: t.configCreatedAt ?? t.created_at };
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

export const isWriteMethod = (m: string): boolean => WRITE_METHODS.has(m);

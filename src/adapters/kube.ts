// Thin adapter to the Kubernetes API. kubeconfig.ts reads the kubeconfig with
// @kubernetes/client-node's parsers (client certs, tokens, exec plugins); the requests go over
// node:https with one keep-alive agent, because the few calls the steps need (server-side apply
// of arbitrary kinds, discovery, a CRD watch, /readyz) are direct in plain HTTP and awkward
// through the generated client (which also opens a new connection for every request).
// Every write is server-side apply with field manager FIELD_MANAGER.
import { rememberSecret } from '../secret.ts';
import { isDeepStrictEqual } from 'node:util';
import * as http from 'node:http';
import * as https from 'node:https';
import type { Logger } from 'pino';
import { loadKubeconfig, type KubeconfigAccess } from './kubeconfig.ts';
import { VERSION } from '../version.ts';
import type { FieldDiff, KubeObject } from '../steps/types.ts';
import { TransientError } from '../engine/errors.ts';
import { childPath, diffObjects } from '../diff.ts';

export const FIELD_MANAGER = 'homelab-bootstrap';
export const OWNER_LABEL = { 'app.kubernetes.io/managed-by': 'homelab-bootstrap' } as const;
/** OWNER_LABEL as a label selector, to list what the daemon made. */
export const OWNER_SELECTOR = Object.entries(OWNER_LABEL)
  .map(([k, v]) => `${k}=${v}`)
  .join(',');

export const USER_AGENT = `homelab-bootstrap/${VERSION}`;

export interface ApplyOptions {
  dryRun?: boolean;
  /**
   * Take back fields another manager owns (someone ran kubectl patch/edit on it, or made it by
   * hand before the first run). Only for objects the daemon owns by name; never for others.
   */
  force?: boolean;
  /** The object as read before (with managedFields): a forced apply logs whose change it overwrites. */
  current?: KubeObject | undefined;
}

/** Fields of an object that a forced apply takes from another field manager. */
export interface Takeover {
  manager: string;
  operation: string;
  paths: string[];
}

export interface WaitCrdsOptions {
  timeoutMs: number;
  signal?: AbortSignal;
  /** Called with a sentence saying what is still awaited, whenever that changes. */
  onProgress?: (text: string) => void;
}

/** A request the apiserver refused for a reason that will not pass by itself (4xx). */
export class KubeApiError extends Error {
  override name = 'KubeApiError';
  /** Deliberately not called `status`/`code`: engine/errors.ts would read 409 as transient. */
  readonly httpStatus: number;
  readonly reason: string | undefined;
  constructor(message: string, httpStatus: number, reason?: string) {
    super(message);
    this.httpStatus = httpStatus;
    this.reason = reason;
  }
}

/** The bounded CRD wait ran out; `missing` names what never became Established. */
export class CrdWaitError extends Error {
  override name = 'CrdWaitError';
  readonly missing: string[];
  constructor(message: string, missing: string[]) {
    super(message);
    this.missing = missing;
  }
}

/**
 * The API server accepted the connection but sent no answer within the request timeout (a hung
 * or stopped apiserver, a proxy that swallows requests). Not retried: every later request of the
 * same client fails at once with this error, so the cluster part of a run fails once, with one
 * message, instead of each request and each retry waiting out its own timeout.
 */
export class KubeUnansweredError extends Error {
  override name = 'KubeUnansweredError';
}

/** Per-request bound: the longest an answer (or the next bytes of one) may take. */
export const REQUEST_TIMEOUT_MS = 10_000;

/** One /readyz try; k3s answers it within milliseconds once its listener is up. */
export const READYZ_TIMEOUT_MS = 5000;
const NO_ANSWER = `connection accepted, no answer within ${READYZ_TIMEOUT_MS / 1000} s`;

export interface ReadyzStatus {
  ready: boolean;
  /** The server accepted the connection and sent nothing (as opposed to refusing it or answering "not ready"). */
  unanswered?: boolean;
  /** Why not, in a few words: "connection refused", "HTTP 500: [-]poststarthook/… failed". */
  detail: string;
}

interface ApiResource {
  name: string;
  kind: string;
  namespaced: boolean;
}

/**
 * Built-in kinds the daemon reads on every run, whose resource names every Kubernetes serves
 * the same: no discovery read for them (a no-op run counts its reads).
 */
const BUILTIN: Record<string, Record<string, ApiResource>> = {
  v1: {
    Namespace: { name: 'namespaces', kind: 'Namespace', namespaced: false },
    Secret: { name: 'secrets', kind: 'Secret', namespaced: true },
    ConfigMap: { name: 'configmaps', kind: 'ConfigMap', namespaced: true },
    Service: { name: 'services', kind: 'Service', namespaced: true },
  },
  'apps/v1': {
    Deployment: { name: 'deployments', kind: 'Deployment', namespaced: true },
    DaemonSet: { name: 'daemonsets', kind: 'DaemonSet', namespaced: true },
    StatefulSet: { name: 'statefulsets', kind: 'StatefulSet', namespaced: true },
  },
  'apiextensions.k8s.io/v1': { CustomResourceDefinition: { name: 'customresourcedefinitions', kind: 'CustomResourceDefinition', namespaced: false } },
  'coordination.k8s.io/v1': { Lease: { name: 'leases', kind: 'Lease', namespaced: true } },
};

interface Connection {
  server: URL;
  agent: http.Agent;
  request: typeof https.request;
}

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
}

interface RequestOptions {
  body?: string;
  contentType?: string;
  signal?: AbortSignal | undefined;
  timeoutMs?: number;
  /** Overrides `Accept: application/json`, e.g. to ask for metadata only. */
  accept?: string;
  /** A readiness probe: a timeout is an answer ("not ready"), it does not mark the server as unanswering. */
  probe?: boolean;
}

/** Content negotiation for a list of PartialObjectMetadata (falls back to whole objects where unsupported). */
const METADATA_LIST = 'application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json';

const TRANSPORT_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ENOTFOUND', 'ECONNABORTED', 'ERR_SOCKET_CLOSED']);

// The server's certificate does not chain to the kubeconfig's CA.
const CA_CODES = new Set(['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED']);

/** A short reference for messages: "cilium.io/v2 CiliumLoadBalancerIPPool homelab", "v1 Secret argocd/sops-age-key". */
export function objectRef(apiVersion: string, kind: string, name?: string, namespace?: string): string {
  return `${apiVersion} ${kind}${name ? ` ${namespace ? `${namespace}/` : ''}${name}` : ''}`;
}

export function crdEstablished(crd: KubeObject | undefined): { established: boolean; detail: string } {
  if (!crd) return { established: false, detail: 'not found' };
  const conditions = ((crd.status as { conditions?: { type?: string; status?: string; reason?: string; message?: string }[] } | undefined)?.conditions ?? []);
  const est = conditions.find((c) => c.type === 'Established');
  if (est?.status === 'True') return { established: true, detail: 'Established' };
  const names = conditions.find((c) => c.type === 'NamesAccepted');
  if (names?.status === 'False') return { established: false, detail: `names not accepted: ${names.message ?? names.reason ?? ''}`.trim() };
  return { established: false, detail: est ? `exists, not Established (${est.reason ?? est.status ?? 'unknown'})` : 'exists, not Established yet' };
}

/**
 * Turns a non-2xx answer into TransientError (429, 5xx: the engine retries) or KubeApiError
 * (the rest), carrying the apiserver's own message and `what` (verb and object reference).
 */
export function apiError(status: number, retryAfter: string | string[] | undefined, body: string, what: string, scrub?: (s: string) => string): Error {
  let message = body.trim().slice(0, 2000);
  let reason: string | undefined;
  try {
    const st = JSON.parse(body) as { message?: string; reason?: string };
    if (st.message) message = st.message;
    reason = st.reason;
  } catch {
    // not a Status object: keep the text
  }
  if (scrub) message = scrub(message);
  // Server-side apply reports an object that does not fit the (CRD) schema as a 500; it
  // fails the same way every time, so retrying would only delay the error.
  if (status === 500 && /failed to create typed (patch )?object|not declared in schema/.test(message)) {
    return new KubeApiError(`${what}: the object does not match the schema the API server has for it: ${message}`, 422, 'Invalid');
  }
  const text = `${what}: HTTP ${status}${reason ? ` ${reason}` : ''}: ${message || '(no message)'}`;
  if (status === 429 || status >= 500) {
    const ra = Number(Array.isArray(retryAfter) ? retryAfter[0] : retryAfter);
    return new TransientError(text, Number.isFinite(ra) && ra > 0 ? { retryAfterMs: ra * 1000 } : undefined);
  }
  return new KubeApiError(text, status, reason);
}

export class KubeClient {
  readonly kubeconfigPath: string;
  readonly log: Logger;
  #access: Promise<KubeconfigAccess> | undefined;
  #headersOf: (() => Promise<Record<string, string>>) | undefined;
  #conn: Connection | undefined;
  #cluster: { name: string; caField: string } | undefined;
  /** Set once a request went unanswered; every later request fails with it at once. */
  #unanswered: KubeUnansweredError | undefined;
  /** Discovery by groupVersion. Only hits are kept: a CRD may appear at any time. */
  readonly #resources = new Map<string, ApiResource[]>();

  constructor(kubeconfigPath: string, log: Logger) {
    this.kubeconfigPath = kubeconfigPath;
    this.log = log;
  }

  /** The API server URL, from the kubeconfig (known after the first request). */
  get server(): string {
    return this.#conn?.server.origin ?? `(the server in ${this.kubeconfigPath})`;
  }

  /** Loads the kubeconfig on first use. Errors name the file and never quote it: it holds credentials. */
  async #connection(): Promise<Connection> {
    if (this.#conn) return this.#conn;
    const access = await (this.#access ??= loadKubeconfig(this.kubeconfigPath));
    if (this.#conn) return this.#conn;
    const { server } = access;
    this.#cluster = { name: access.clusterName, caField: access.caField };
    const tls = server.protocol === 'https:';
    if (!tls && !access.skipTLSVerify) throw new Error(`kubeconfig ${this.kubeconfigPath}: plain http to ${server.origin} needs insecure-skip-tls-verify`);
    // Static TLS material is read once; per-request headers (tokens, exec plugins) are fresh each time.
    const opts: https.AgentOptions = { keepAlive: true, maxSockets: 8, ...access.agent };
    if (access.skipTLSVerify) opts.rejectUnauthorized = false;
    this.#headersOf = access.headers;
    this.#conn = tls
      ? { server, agent: new https.Agent(opts), request: https.request }
      : { server, agent: new http.Agent({ keepAlive: true, maxSockets: 8 }), request: http.request as typeof https.request };
    return this.#conn;
  }

  async #headers(): Promise<Record<string, string>> {
    const headers = await this.#headersOf!();
    // The kubeconfig's token (or an exec plugin's) is a secret like any credential: scrub() must know it.
    rememberSecret(headers.Authorization?.replace(/^(Bearer|Basic) /, ''));
    headers['User-Agent'] = USER_AGENT;
    headers.Accept = 'application/json';
    return headers;
  }

  async #request(method: string, path: string, o: RequestOptions = {}): Promise<RawResponse> {
    if (this.#unanswered && !o.probe) throw new KubeUnansweredError(this.#unanswered.message, { cause: this.#unanswered });
    const conn = await this.#connection();
    const headers = await this.#headers();
    if (o.accept) headers.Accept = o.accept;
    if (o.body !== undefined) {
      headers['Content-Type'] = o.contentType ?? 'application/json';
      headers['Content-Length'] = String(Buffer.byteLength(o.body));
    }
    const url = new URL(path, conn.server);
    const started = performance.now();
    const res = await new Promise<RawResponse>((resolve, reject) => {
      const timeoutMs = o.timeoutMs ?? REQUEST_TIMEOUT_MS;
      // Our own timer until the answer starts: the socket's idle timeout counts from the TCP
      // connect again once TLS is set up, so a silent server would be waited for twice as long.
      const noAnswer = setTimeout(() => req.destroy(Object.assign(new Error('no answer'), { code: 'HB_NO_ANSWER' })), timeoutMs);
      const req = conn.request(url, { method, headers, agent: conn.agent, timeout: timeoutMs, ...(o.signal ? { signal: o.signal } : {}) }, (r) => {
        clearTimeout(noAnswer);
        const chunks: Buffer[] = [];
        r.on('data', (c: Buffer) => chunks.push(c));
        r.on('end', () => resolve({ status: r.statusCode ?? 0, headers: r.headers, text: Buffer.concat(chunks).toString('utf8') }));
        r.on('error', reject);
      });
      req.on('timeout', () => req.destroy(Object.assign(new Error('request timed out'), { code: 'HB_NO_ANSWER' })));
      req.on('error', (e) => {
        clearTimeout(noAnswer);
        reject(e);
      });
      req.end(o.body);
    }).catch((e: unknown) => {
      if ((e as NodeJS.ErrnoException).code === 'HB_NO_ANSWER' && !o.signal?.aborted) {
        const s = Math.round((o.timeoutMs ?? REQUEST_TIMEOUT_MS) / 1000);
        const err = new KubeUnansweredError(
          `${method} ${url.pathname}: the API server at ${conn.server.origin} (kubeconfig ${this.kubeconfigPath}) accepted the connection but sent no answer within ${s} s; not asking it again in this run (is the apiserver hung, or a proxy or firewall swallowing requests?)`,
        );
        if (!o.probe) this.#unanswered = err;
        throw err;
      }
      throw this.#transportError(method, url.pathname, e, o.signal);
    });
    this.#unanswered = undefined; // it answers (again)
    this.log.debug({ method, path: url.pathname, status: res.status, ms: Math.round(performance.now() - started) }, 'kube request');
    return res;
  }

  /** A plain request with this client's credentials, for verbs server-side apply cannot say (the Lease's create-if-absent and compare-and-swap). */
  raw(method: string, path: string, o: RequestOptions = {}): Promise<RawResponse> {
    return this.#request(method, path, o);
  }

  #transportError(method: string, path: string, e: unknown, signal: AbortSignal | undefined): unknown {
    if (signal?.aborted) return signal.reason ?? e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code && (TRANSPORT_CODES.has(code) || code.startsWith('UND_ERR'))) {
      return new TransientError(`${method} ${path}: cannot reach the API server at ${this.#conn?.server.origin} (${code})`, { cause: e });
    }
    const tls = this.#tlsProblem(code, (e as Error).message);
    if (tls) return new Error(`${method} ${path}: ${tls}`, { cause: e });
    return new Error(`${method} ${path}: request to the API server at ${this.#conn?.server.origin} failed: ${(e as Error).message}`, { cause: e });
  }

  /** A TLS failure as a sentence naming the kubeconfig file and the field to check; undefined for other errors. */
  #tlsProblem(code: string | undefined, text: string): string | undefined {
    const origin = this.#conn?.server.origin;
    const cluster = `cluster "${this.#cluster?.name ?? '?'}"`;
    const where = `kubeconfig ${this.kubeconfigPath}, ${cluster}`;
    if (code && CA_CODES.has(code)) {
      return `the API server at ${origin} presented a certificate that the CA in ${where} (field ${this.#cluster?.caField ?? 'certificate-authority-data'}) does not verify (${code}); the CA belongs to another cluster, or the server field points at another server`;
    }
    if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
      return `the certificate of the API server at ${origin} is not valid for that name (${code}); check the server field (or tls-server-name) of ${where}`;
    }
    if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID') {
      return `the certificate of the API server at ${origin} ${code === 'CERT_HAS_EXPIRED' ? 'has expired' : 'is not valid yet'} (${code}); check this machine's clock, and that ${where} points at the right server`;
    }
    if (code === 'ERR_SSL_WRONG_VERSION_NUMBER' || code === 'ERR_SSL_PACKET_LENGTH_TOO_LONG' || (code === 'EPROTO' && /wrong version number|packet length too long|http request/i.test(text))) {
      return `the server at ${origin} does not speak TLS (is it plain HTTP, or another service on that port?); check the server field of ${where}`;
    }
    return undefined;
  }

  #fail(res: RawResponse, what: string, scrub?: (s: string) => string): Error {
    return apiError(res.status, res.headers['retry-after'], res.text, what, scrub);
  }

  // ---- discovery --------------------------------------------------------------------------

  static #groupVersionPath(apiVersion: string): string {
    return apiVersion.includes('/') ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
  }

  /** The resources served at `apiVersion`, or undefined when the server does not serve it. */
  async #resourceList(apiVersion: string, fresh = false): Promise<ApiResource[] | undefined> {
    const cached = this.#resources.get(apiVersion);
    if (cached && !fresh) return cached;
    const res = await this.#request('GET', KubeClient.#groupVersionPath(apiVersion));
    if (res.status === 404) return undefined;
    if (res.status !== 200) throw this.#fail(res, `discovery of ${apiVersion}`);
    const list = (JSON.parse(res.text) as { resources?: ApiResource[] }).resources ?? [];
    this.#resources.set(apiVersion, list);
    return list;
  }

  async #resourceFor(apiVersion: string, kind: string): Promise<ApiResource | undefined> {
    const builtin = BUILTIN[apiVersion]?.[kind];
    if (builtin) return builtin;
    const find = (l: ApiResource[] | undefined) => l?.find((r) => r.kind === kind && !r.name.includes('/'));
    return find(await this.#resourceList(apiVersion)) ?? find(await this.#resourceList(apiVersion, true));
  }

  static #path(apiVersion: string, r: ApiResource, namespace: string | undefined, name?: string): string {
    const ns = r.namespaced && namespace ? `/namespaces/${encodeURIComponent(namespace)}` : '';
    return `${KubeClient.#groupVersionPath(apiVersion)}${ns}/${r.name}${name ? `/${encodeURIComponent(name)}` : ''}`;
  }

  /**
   * The first apiVersion ("cilium.io/v2") in the server's preference order that serves
   * `resourcePlural` of `group`; undefined when none does (CRD not installed yet).
   */
  async servedVersion(group: string, resourcePlural: string): Promise<string | undefined> {
    return (await this.servedVersions(group, [resourcePlural]))[resourcePlural]?.[0];
  }

  /**
   * For each of `resourcePlurals` of `group`, every apiVersion serving it, in the server's
   * preference order. One read of the group and one per version, however many plurals.
   */
  async servedVersions(group: string, resourcePlurals: readonly string[]): Promise<Record<string, string[]>> {
    const out: Record<string, string[]> = Object.fromEntries(resourcePlurals.map((p) => [p, []]));
    const res = await this.#request('GET', `/apis/${encodeURIComponent(group)}`);
    if (res.status === 404) return out;
    if (res.status !== 200) throw this.#fail(res, `discovery of ${group}`);
    const versions = (JSON.parse(res.text) as { versions?: { groupVersion: string }[] }).versions ?? [];
    for (const v of versions) {
      const list = await this.#resourceList(v.groupVersion, true);
      for (const p of resourcePlurals) if (list?.some((r) => r.name === p)) out[p]!.push(v.groupVersion);
    }
    return out;
  }

  /**
   * Whether the server serves `kind` at `apiVersion` (discovery; one read). Discovery lists a
   * custom resource only once its CRD is Established, so this is also a cheap "CRD ready?".
   */
  async serves(apiVersion: string, kind: string): Promise<boolean> {
    const list = await this.#resourceList(apiVersion, true);
    return list?.some((r) => r.kind === kind && !r.name.includes('/')) ?? false;
  }

  /**
   * Polls discovery until `kind` is served. Needed right after a CRD turns Established: the
   * discovery document (and so apply) can trail the condition by a moment.
   */
  async waitServed(apiVersion: string, kind: string, opts: { timeoutMs: number; signal?: AbortSignal }): Promise<void> {
    const deadline = performance.now() + opts.timeoutMs;
    for (;;) {
      opts.signal?.throwIfAborted();
      if (await this.serves(apiVersion, kind)) return;
      if (performance.now() > deadline) throw new Error(`${apiVersion} ${kind} is not served by the API server ${Math.round(opts.timeoutMs / 1000)} s after its CRD became Established`);
      await sleep(250, opts.signal ?? new AbortController().signal);
    }
  }

  // ---- reads ------------------------------------------------------------------------------

  /** GET /readyz; ready=false while the apiserver is starting or unreachable. Bad credentials throw. */
  async readyzStatus(signal?: AbortSignal): Promise<ReadyzStatus> {
    let res: RawResponse;
    try {
      res = await this.#request('GET', '/readyz', { signal, timeoutMs: READYZ_TIMEOUT_MS, probe: true });
    } catch (e) {
      if (signal?.aborted) throw e;
      if (e instanceof KubeUnansweredError) return { ready: false, detail: NO_ANSWER, unanswered: true };
      if (e instanceof TransientError) {
        const code = ((e.cause as NodeJS.ErrnoException | undefined)?.code ?? '').toString();
        return { ready: false, detail: code === 'ECONNREFUSED' ? 'connection refused' : `unreachable (${code || e.message})` };
      }
      throw e;
    }
    if (res.status === 200) return { ready: true, detail: 'ok' };
    if (res.status === 401 || res.status === 403) {
      throw new KubeApiError(`GET /readyz at ${this.server}: HTTP ${res.status}: the kubeconfig ${this.kubeconfigPath} credentials are not accepted`, res.status);
    }
    const failing = res.text
      .split('\n')
      .filter((l) => l.startsWith('[-]'))
      .slice(0, 3)
      .join('; ');
    return { ready: false, detail: `HTTP ${res.status}${failing ? `: ${failing}` : ''}` };
  }

  /** GET /readyz; false while the apiserver is starting or unreachable. */
  async readyz(signal?: AbortSignal): Promise<boolean> {
    return (await this.readyzStatus(signal)).ready;
  }

  /** The object, or undefined when it (or its kind) does not exist. */
  async get(apiVersion: string, kind: string, name: string, namespace?: string): Promise<KubeObject | undefined> {
    const r = await this.#resourceFor(apiVersion, kind);
    if (!r) return undefined;
    const res = await this.#request('GET', KubeClient.#path(apiVersion, r, namespace, name));
    if (res.status === 404) return undefined;
    if (res.status !== 200) throw this.#fail(res, `get ${objectRef(apiVersion, kind, name, namespace)}`);
    return JSON.parse(res.text) as KubeObject;
  }

  /**
   * All objects of a kind (in one namespace or all), following pagination; [] when the kind is not served.
   * `metadataOnly` asks for each object's metadata alone (a CRD is megabytes whole).
   */
  async list(apiVersion: string, kind: string, opts: { namespace?: string; labelSelector?: string; metadataOnly?: boolean } = {}): Promise<KubeObject[]> {
    const r = await this.#resourceFor(apiVersion, kind);
    if (!r) return [];
    const items: KubeObject[] = [];
    let cont: string | undefined;
    do {
      const q = new URLSearchParams({ limit: '500' });
      if (opts.labelSelector) q.set('labelSelector', opts.labelSelector);
      if (cont) q.set('continue', cont);
      const res = await this.#request('GET', `${KubeClient.#path(apiVersion, r, opts.namespace)}?${q}`, opts.metadataOnly ? { accept: METADATA_LIST } : {});
      if (res.status !== 200) throw this.#fail(res, `list ${objectRef(apiVersion, kind)}${opts.labelSelector ? ` (${opts.labelSelector})` : ''}`);
      const body = JSON.parse(res.text) as { items?: KubeObject[]; metadata?: { continue?: string } };
      // List items carry no apiVersion/kind; callers compare whole objects, so put them back.
      for (const it of body.items ?? []) items.push({ ...it, apiVersion, kind });
      cont = body.metadata?.continue || undefined;
    } while (cont);
    return items;
  }

  // ---- writes -----------------------------------------------------------------------------

  /** Server-side apply with FIELD_MANAGER; returns the object as the server holds (or, dry-run, would hold) it. */
  async apply(obj: KubeObject, opts: ApplyOptions = {}): Promise<KubeObject> {
    const { apiVersion, kind } = obj;
    const { name, namespace } = obj.metadata;
    const ref = objectRef(apiVersion, kind, name, namespace);
    const r = await this.#resourceFor(apiVersion, kind);
    if (!r) throw new KubeApiError(`apply ${ref}: the API server does not serve ${apiVersion} ${kind} (is its CRD installed and Established?)`, 404, 'NotFound');
    if (r.namespaced && !namespace) throw new Error(`apply ${ref}: ${kind} is namespaced; metadata.namespace is required`);
    const q = new URLSearchParams({ fieldManager: FIELD_MANAGER });
    if (opts.force) q.set('force', 'true');
    if (opts.dryRun) q.set('dryRun', 'All');
    const res = await this.#request('PATCH', `${KubeClient.#path(apiVersion, r, namespace, name)}?${q}`, {
      body: JSON.stringify(obj),
      contentType: 'application/apply-patch+yaml',
    });
    if (res.status !== 200 && res.status !== 201) throw this.#fail(res, `apply ${ref}${opts.dryRun ? ' (dry run)' : ''}`, kind === 'Secret' ? secretScrubber(obj) : undefined);
    const taken = opts.force && !opts.dryRun ? takeovers(obj, opts.current) : [];
    if (taken.length > 0) this.log.warn({ ref, takenFrom: taken }, `${ref}: ${describeTakeovers(taken)}`);
    this.log.debug({ ref, dryRun: Boolean(opts.dryRun) }, 'applied');
    return JSON.parse(res.text) as KubeObject;
  }

  /** Deletes the object; one that is already gone is fine. */
  async delete(apiVersion: string, kind: string, name: string, namespace?: string): Promise<void> {
    const ref = objectRef(apiVersion, kind, name, namespace);
    const r = await this.#resourceFor(apiVersion, kind);
    if (!r) return;
    const res = await this.#request('DELETE', KubeClient.#path(apiVersion, r, namespace, name), {
      body: JSON.stringify({ kind: 'DeleteOptions', apiVersion: 'v1', propagationPolicy: 'Background' }),
    });
    if (res.status === 404) return;
    if (res.status !== 200 && res.status !== 202) throw this.#fail(res, `delete ${ref}`);
  }

  /** Creates the namespace (labelled as owned) unless it exists; true when it was created. */
  async ensureNamespace(name: string, signal?: AbortSignal): Promise<boolean> {
    signal?.throwIfAborted();
    if (await this.get('v1', 'Namespace', name)) return false;
    await this.apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels: { ...OWNER_LABEL } } });
    return true;
  }

  // ---- watch ------------------------------------------------------------------------------

  /**
   * Resolves once every named CRD is Established, watching them (one watch per name, which
   * starts with the current state). Bounded by `timeoutMs` and `signal`; the error names the
   * CRDs still missing and how far each got. Returns the Established CRD objects by name.
   */
  async waitCrdsEstablished(names: readonly string[], opts: WaitCrdsOptions): Promise<Map<string, KubeObject>> {
    const state = new Map<string, string>(names.map((n) => [n, 'not found']));
    const seen = new Map<string, KubeObject>();
    const pending = () => names.filter((n) => state.get(n) !== 'Established');
    const describe = () =>
      pending()
        .map((n) => `${n} (${state.get(n)})`)
        .join(', ');
    let lastProgress = '';
    const progress = () => {
      const p = pending();
      const text = p.length ? `waiting for CRD${p.length > 1 ? 's' : ''} ${p.join(', ')} to be Established` : 'CRDs Established';
      if (text !== lastProgress) {
        lastProgress = text;
        opts.onProgress?.(text);
      }
    };
    progress();
    if (pending().length === 0) return seen;

    const stop = new AbortController();
    const deadline = performance.now() + opts.timeoutMs;
    const timer = setTimeout(() => stop.abort(new Error('deadline')), opts.timeoutMs);
    const onAbort = () => stop.abort(opts.signal?.reason);
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    if (opts.signal?.aborted) onAbort();

    const watchOne = async (name: string): Promise<void> => {
      while (!stop.signal.aborted && state.get(name) !== 'Established') {
        const left = Math.max(1, Math.ceil((deadline - performance.now()) / 1000));
        const q = new URLSearchParams({ fieldSelector: `metadata.name=${name}`, timeoutSeconds: String(Math.min(left, 300)) });
        const opened = performance.now();
        try {
          await this.#watch(`/apis/apiextensions.k8s.io/v1/customresourcedefinitions?${q}`, stop.signal, (type, obj) => {
            if (type === 'ERROR') return false; // e.g. 410 Gone: start over with a fresh watch
            const s = type === 'DELETED' ? { established: false, detail: 'not found (deleted)' } : crdEstablished(obj);
            state.set(name, s.detail);
            if (s.established) seen.set(name, obj);
            progress();
            return !s.established;
          });
          // A watch the server ends at once (an ERROR event, a proxy cutting streams) must not
          // turn into a tight reconnect loop.
          if (state.get(name) !== 'Established' && performance.now() - opened < 1000) await sleep(500, stop.signal);
        } catch (e) {
          if (stop.signal.aborted) return;
          if (!(e instanceof TransientError)) throw e;
          this.log.debug({ crd: name, err: e.message }, 'CRD watch interrupted; reconnecting');
          await sleep(Math.min(1000, Math.max(0, deadline - performance.now())), stop.signal);
        }
      }
    };

    try {
      await Promise.all(names.map(watchOne));
    } finally {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      stop.abort(new Error('done'));
    }
    const missing = pending();
    if (missing.length === 0) return seen;
    const why = opts.signal?.aborted ? 'the step was cancelled (its timeout ran out)' : `gave up after ${Math.round(opts.timeoutMs / 1000)} s`;
    throw new CrdWaitError(`CRD${missing.length > 1 ? 's' : ''} not Established: ${describe()}; ${why}`, missing);
  }

  /**
   * One watch request: calls `onEvent` per event until it returns false, the server ends the
   * watch (timeoutSeconds), or `signal` aborts. Resolves in all three cases.
   */
  async #watch(pathAndQuery: string, signal: AbortSignal, onEvent: (type: string, obj: KubeObject) => boolean): Promise<void> {
    const conn = await this.#connection();
    const headers = await this.#headers();
    const sep = pathAndQuery.includes('?') ? '&' : '?';
    const url = new URL(`${pathAndQuery}${sep}watch=true`, conn.server);
    await new Promise<void>((resolve, reject) => {
      if (signal.aborted) return resolve();
      const req = conn.request(url, { method: 'GET', headers, agent: conn.agent }, (res) => {
        if (res.statusCode !== 200) {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => reject(this.#fail({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }, `watch ${url.pathname}`)));
          return;
        }
        let buf = '';
        let finished = false;
        const finish = () => {
          if (finished) return;
          finished = true;
          signal.removeEventListener('abort', onAbort);
          req.destroy();
          resolve();
        };
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          buf += chunk;
          for (let nl = buf.indexOf('\n'); nl >= 0 && !finished; nl = buf.indexOf('\n')) {
            const line = buf.slice(0, nl).trim();
            buf = buf.slice(nl + 1);
            if (!line) continue;
            let ev: { type?: string; object?: KubeObject };
            try {
              ev = JSON.parse(line) as typeof ev;
            } catch {
              continue;
            }
            if (!onEvent(ev.type ?? '', ev.object as KubeObject)) finish();
          }
        });
        res.on('end', finish);
        res.on('close', finish);
        res.on('error', finish);
      });
      const onAbort = () => {
        req.destroy();
        resolve();
      };
      signal.addEventListener('abort', onAbort, { once: true });
      req.on('error', (e) => {
        signal.removeEventListener('abort', onAbort);
        if (signal.aborted) resolve();
        else reject(this.#transportError('GET', url.pathname, e, undefined));
      });
      req.end();
    });
  }

  /** Closes idle keep-alive connections (tests; a daemon run ends with the process). */
  close(): void {
    this.#conn?.agent.destroy();
    this.#conn = undefined;
  }
}


function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

/** An apiserver message about a Secret could echo a value; cut every value (and its base64) out. */
function secretScrubber(obj: KubeObject): (s: string) => string {
  const values: string[] = [];
  for (const field of ['data', 'stringData'] as const) {
    for (const v of Object.values((obj[field] as Record<string, string> | undefined) ?? {})) {
      if (typeof v !== 'string' || v.length < 4) continue;
      values.push(v);
      if (field === 'data') values.push(Buffer.from(v, 'base64').toString('utf8'));
      else values.push(Buffer.from(v).toString('base64'));
    }
  }
  return (s) => values.reduce((acc, v) => (v && acc.includes(v) ? acc.split(v).join('[redacted]') : acc), s);
}

// ---- pure comparison of a desired object with the server's copy --------------------------

type FieldsV1 = { [k: string]: FieldsV1 };

/** Leaf field paths (as key lists) in a managedFields fieldsV1 set; a keyed list counts as one field. */
function ownedLeaves(fs: FieldsV1, prefix: string[] = []): string[][] {
  const keys = Object.keys(fs).filter((k) => k !== '.');
  if (keys.length === 0) return [prefix];
  if (keys.some((k) => !k.startsWith('f:'))) return [prefix];
  return keys.flatMap((k) => ownedLeaves(fs[k] ?? {}, [...prefix, k.slice(2)]));
}

function lookup(root: unknown, keys: readonly string[]): { found: boolean; value: unknown } {
  let cur: unknown = root;
  for (const k of keys) {
    if (cur === null || typeof cur !== 'object' || Array.isArray(cur)) return { found: true, value: cur }; // inside a value we set whole
    if (!(k in (cur as Record<string, unknown>))) return { found: false, value: undefined };
    cur = (cur as Record<string, unknown>)[k];
  }
  return { found: true, value: cur };
}

/**
 * What a server-side apply of `want` would change on `have`: fields `want` sets to another value,
 * plus fields FIELD_MANAGER applied before that `want` no longer names (SSA removes those).
 * Fields the server defaulted or other managers own are not differences. [] = nothing to write.
 * `redact` hides values at matching paths (e.g. Secret data).
 */
export function applyDiff(want: KubeObject, have: KubeObject | undefined, opts: { redact?: (path: string) => boolean } = {}): FieldDiff[] {
  const { apiVersion: _a, kind: _k, ...desired } = want;
  const diffOpts = { onlyFieldsOfTo: true, ...(opts.redact ? { redact: opts.redact } : {}) };
  // A new object reads as its top-level fields, each added.
  if (!have) return diffObjects({}, desired, diffOpts);
  const out = diffObjects(have, desired, diffOpts);
  const managed = (have.metadata.managedFields as { manager?: string; operation?: string; fieldsV1?: FieldsV1 }[] | undefined) ?? [];
  for (const entry of managed) {
    if (entry.manager !== FIELD_MANAGER || entry.operation !== 'Apply' || !entry.fieldsV1) continue;
    for (const keys of ownedLeaves(entry.fieldsV1)) {
      if (keys.length === 0 || lookup(desired, keys).found) continue;
      const path = keys.reduce<string>((p, k) => childPath(p, k), '$');
      if (out.some((d) => d.path === path)) continue;
      const from = lookup(have, keys);
      out.push(opts.redact?.(path) ? { path, from: '[redacted]' } : { path, from: from.value });
    }
  }
  return out;
}

/**
 * Fields `want` sets that another field manager owns in `have` with another value: exactly what a
 * server-side apply would refuse as a conflict (409), and what a forced one takes back.
 */
export function takeovers(want: KubeObject, have: KubeObject | undefined): Takeover[] {
  if (!have) return [];
  const { apiVersion: _a, kind: _k, ...desired } = want;
  const managed = (have.metadata.managedFields as { manager?: string; operation?: string; fieldsV1?: FieldsV1 }[] | undefined) ?? [];
  const out: Takeover[] = [];
  for (const entry of managed) {
    if (entry.manager === FIELD_MANAGER || !entry.fieldsV1) continue;
    const paths = ownedLeaves(entry.fieldsV1)
      .filter((keys) => {
        if (keys.length === 0) return false;
        const w = lookup(desired, keys);
        const h = lookup(have, keys).value;
        // Owning a map itself ("f:data": {"." : {}}, or {} once its keys went to others) is owning its presence, not its keys.
        if (h !== null && typeof h === 'object' && !Array.isArray(h)) return false;
        return w.found && !isDeepStrictEqual(w.value, h);
      })
      .map((keys) => keys.reduce<string>((p, k) => childPath(p, k), '$'));
    if (paths.length > 0) out.push({ manager: entry.manager ?? '(unnamed manager)', operation: entry.operation ?? 'Update', paths });
  }
  return out;
}

/** "overwrites the change of kubectl-patch (Update) to $.data.token", for the plan and the log. */
export function describeTakeovers(taken: readonly Takeover[]): string {
  return `overwrites ${taken.map((t) => `the change of ${t.manager} (${t.operation}) to ${t.paths.join(', ')}`).join('; ')}: the daemon owns this object`;
}

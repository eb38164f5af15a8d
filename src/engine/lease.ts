// One bootstrapping node at a time. With several k3s servers the daemon runs on each of them;
// before its first write a run takes the coordination.k8s.io/v1 Lease kube-system/homelab-bootstrap,
// renews it every third of its duration and gives it back at the end. A holder that dies stops
// renewing and loses it after leaseDurationSeconds.
//
// Taken lazily (the engine's beforeWrite hook): a run with nothing to do never writes, not even
// the lease, so "the second run writes nothing" still holds on a multi-server cluster.
//
// Expiry is judged the way client-go's leader election judges it: by how long *this* process has
// seen the lease unchanged, on its own monotonic clock, never by comparing the holder's renewTime
// with the local wall clock (a node that just booted may not have a synced clock yet). The one
// shortcut: a holder on this very host, in this boot, whose pid is gone (a run killed with
// SIGKILL), or from an earlier boot of this host, is known dead and replaced at once.
//
// Without an answering apiserver no lease can be taken, and then nobody can coordinate: the run
// writes without it (see acquire()). Cluster writes fail anyway in that state, and Cloudflare's
// API itself refuses a second tunnel of the same name (1013) and a duplicate record (81053),
// which the adapter turns into "found it, continue".
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { pino, type Logger } from 'pino';
import { TransientError } from './errors.ts';
import { apiError, FIELD_MANAGER, KubeClient, OWNER_LABEL, type RawResponse } from '../adapters/kube.ts';

export const LEASE_NAMESPACE = 'kube-system';
export const LEASE_NAME = 'homelab-bootstrap';
export const DEFAULT_LEASE_SECONDS = 60;
/** How long a run waits for another node's run before it gives up (exit 75: systemd retries). */
export const DEFAULT_LEASE_WAIT_SECONDS = 300;

export interface LeaseSpec {
  holderIdentity?: string;
  leaseDurationSeconds?: number;
  acquireTime?: string;
  renewTime?: string;
  leaseTransitions?: number;
}

export interface LeaseObject {
  apiVersion: 'coordination.k8s.io/v1';
  kind: 'Lease';
  metadata: { name: string; namespace: string; resourceVersion?: string; labels?: Record<string, string>; [k: string]: unknown };
  spec?: LeaseSpec;
}

/** Another writer changed the lease since it was read (409), or it vanished (404 on update). */
export class LeaseConflictError extends Error {
  override name = 'LeaseConflictError';
}

/**
 * The apiserver cannot be asked: unreachable, failing (5xx, 429), refusing the credentials, or the
 * kubeconfig unusable. The only errors after which a run writes without the lease.
 */
export class LeaseUnavailableError extends Error {
  override name = 'LeaseUnavailableError';
}

/** Another node held the lease for longer than this run was willing to wait. */
export class LeaseHeldError extends Error {
  override name = 'LeaseHeldError';
}

/** Where the lease lives. Create and replace are conditional: they throw LeaseConflictError when someone got there first. */
export interface LeaseStore {
  get(): Promise<LeaseObject | undefined>;
  /** POST: fails with LeaseConflictError when the lease exists already. */
  create(lease: LeaseObject): Promise<LeaseObject>;
  /** PUT with metadata.resourceVersion: fails with LeaseConflictError when it changed meanwhile. */
  replace(lease: LeaseObject): Promise<LeaseObject>;
}

// ---- identity -------------------------------------------------------------------------------

export interface Holder {
  node: string;
  pid: number;
  boot: string;
}

export function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

/** `node/pid/boot`: what `kubectl get lease` shows as the holder, and what the shortcut above parses. */
export function holderIdentity(h: Holder): string {
  return `${h.node}/${h.pid}/${h.boot}`;
}

export function parseHolder(identity: string | undefined): Holder | undefined {
  const m = /^(.+)\/(\d+)\/([^/]+)$/.exec(identity ?? '');
  return m ? { node: m[1]!, pid: Number(m[2]), boot: m[3]! } : undefined;
}

/** "node1 (pid 1234)", for messages. */
export function describeHolder(identity: string): string {
  const h = parseHolder(identity);
  return h ? `${h.node} (pid ${h.pid})` : identity;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  // A killed process its parent has not reaped yet is a zombie: dead, though signal 0 reaches it.
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

/** Known dead without waiting: an earlier boot of this host, or a pid of this boot that is gone. */
function knownDead(holder: Holder, me: Holder): boolean {
  if (holder.node !== me.node || holder.boot === 'unknown' || me.boot === 'unknown') return false;
  if (holder.boot !== me.boot) return true;
  return holder.pid !== me.pid && !pidAlive(holder.pid);
}

// ---- settings -------------------------------------------------------------------------------

export interface LeaseSettings {
  durationSeconds: number;
  waitSeconds: number;
  node: string;
}

/**
 * HOMELAB_BOOTSTRAP_LEASE_SECONDS, HOMELAB_BOOTSTRAP_LEASE_WAIT_SECONDS and
 * HOMELAB_BOOTSTRAP_NODE_NAME (default: the hostname; the k3s node name is a good choice).
 * Environment, not settings: they tune a multi-node deployment and tests, not the desired state.
 */
export function leaseSettingsFromEnv(env: NodeJS.ProcessEnv = process.env): LeaseSettings {
  const seconds = (name: string, dflt: number): number => {
    const raw = env[name];
    if (raw === undefined || raw === '') return dflt;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < 1 || n > 86_400) throw new Error(`${name}: expected whole seconds (1-86400), got "${raw}"`);
    return n;
  };
  return {
    durationSeconds: seconds('HOMELAB_BOOTSTRAP_LEASE_SECONDS', DEFAULT_LEASE_SECONDS),
    waitSeconds: seconds('HOMELAB_BOOTSTRAP_LEASE_WAIT_SECONDS', DEFAULT_LEASE_WAIT_SECONDS),
    node: env.HOMELAB_BOOTSTRAP_NODE_NAME || hostname(),
  };
}

// ---- the lease ------------------------------------------------------------------------------

export interface BootstrapLeaseOptions extends LeaseSettings {
  log: Logger;
  /** This process; defaults to node/pid/boot of the running process. */
  holder?: Holder;
  /** Called with a sentence whenever the run starts waiting for another holder (systemd status). */
  onWait?(text: string): void;
  /** Pause between reads while another node holds the lease; default a quarter of its duration, at most 2 s. */
  pollMs?: number;
}

const mono = (): number => performance.now();
const sleep = (ms: number, signal: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });

function raceSignal<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

function withoutManagedFields(meta: LeaseObject['metadata'] | undefined): Partial<LeaseObject['metadata']> {
  if (!meta) return {};
  const { managedFields: _drop, ...rest } = meta;
  return rest;
}

/** metav1.MicroTime: RFC 3339 with exactly six fractional digits (the apiserver rejects three). */
export function microTime(d: Date = new Date()): string {
  return d.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
}

const message = (e: unknown): string => (e instanceof Error ? e.message : String(e));
const ref = `Lease ${LEASE_NAMESPACE}/${LEASE_NAME}`;

interface Held {
  lease: LeaseObject;
  /** mono() when this process became the holder: state read before then may be stale. */
  since: number;
  /** mono() of the last successful write of the lease. */
  renewedAt: number;
}

export class BootstrapLease {
  readonly #store: LeaseStore;
  readonly #opts: BootstrapLeaseOptions;
  readonly #me: Holder;
  readonly #identity: string;
  readonly #stop = new AbortController();
  #held: Held | undefined;
  #acquiring: Promise<number | undefined> | undefined;
  #gaveUp: LeaseHeldError | undefined;
  #renewTimer: NodeJS.Timeout | undefined;
  #renewing: Promise<void> | undefined;
  #lastUnguarded = '';
  /** Lease writes this process made (tests count them). */
  writes = 0;

  constructor(store: LeaseStore, opts: BootstrapLeaseOptions) {
    this.#store = store;
    this.#opts = opts;
    this.#me = opts.holder ?? { node: opts.node, pid: process.pid, boot: bootId() };
    this.#identity = holderIdentity(this.#me);
  }

  get identity(): string {
    return this.#identity;
  }

  get held(): boolean {
    return this.#held !== undefined;
  }

  /** Set once the run gave up waiting for another node (the CLI then exits 75). */
  get gaveUp(): LeaseHeldError | undefined {
    return this.#gaveUp;
  }

  get #durationMs(): number {
    return this.#opts.durationSeconds * 1000;
  }

  /**
   * Resolves when this process may write: to the time (mono) since which it has held the lease,
   * or to undefined when no lease could be taken because the apiserver does not answer (or
   * refuses the credentials); the caller then writes unguarded. Throws LeaseHeldError when
   * another node kept it beyond the wait bound. Concurrent callers share one acquisition.
   */
  acquire(signal?: AbortSignal): Promise<number | undefined> {
    if (this.#gaveUp) return Promise.reject(this.#gaveUp);
    if (this.#held) return Promise.resolve(this.#held.since);
    this.#acquiring ??= this.#acquireLoop().finally(() => {
      this.#acquiring = undefined;
    });
    return raceSignal(this.#acquiring, signal);
  }

  #desired(prev: LeaseObject | undefined, now: string, transition: boolean): LeaseObject {
    const spec = prev?.spec ?? {};
    return {
      apiVersion: 'coordination.k8s.io/v1',
      kind: 'Lease',
      metadata: {
        // resourceVersion included: it makes the PUT conditional. managedFields left out: a PUT
        // that carries them would overwrite the server's bookkeeping.
        ...withoutManagedFields(prev?.metadata),
        name: LEASE_NAME,
        namespace: LEASE_NAMESPACE,
        labels: { ...(prev?.metadata.labels ?? {}), ...OWNER_LABEL },
      },
      spec: {
        holderIdentity: this.#identity,
        leaseDurationSeconds: this.#opts.durationSeconds,
        acquireTime: transition || !spec.acquireTime ? now : spec.acquireTime,
        renewTime: now,
        leaseTransitions: (spec.leaseTransitions ?? 0) + (transition && prev ? 1 : 0),
      },
    };
  }

  async #acquireLoop(): Promise<number | undefined> {
    const { log } = this.#opts;
    const waitMs = this.#opts.waitSeconds * 1000;
    const started = mono();
    let observed: { version: string; at: number } | undefined;
    let announced = '';
    let sawOther = false; // another live holder was seen during this acquisition
    for (;;) {
      if (this.#stop.signal.aborted) throw new Error(`${ref}: the run is over`);
      try {
        const lease = await this.#store.get();
        const now = microTime();
        if (!lease) {
          return this.#took(await this.#store.create(this.#desired(undefined, now, true)), 'created');
        }
        const spec = lease.spec ?? {};
        const holder = spec.holderIdentity ?? '';
        const version = lease.metadata.resourceVersion ?? '';
        if (observed?.version !== version) observed = { version, at: mono() };
        const durationMs = (spec.leaseDurationSeconds ?? this.#opts.durationSeconds) * 1000;
        const parsed = parseHolder(holder);
        const why =
          holder === ''
            ? 'free'
            : holder === this.#identity
              ? 'ours'
              : parsed && knownDead(parsed, this.#me)
                ? `its holder ${describeHolder(holder)} is gone (${parsed.boot === this.#me.boot ? 'process ended' : 'this host rebooted since'})`
                : mono() - observed.at >= durationMs
                  ? `its holder ${describeHolder(holder)} has not renewed it for ${Math.round(durationMs / 1000)} s`
                  : undefined;
        if (why !== undefined) {
          const taken = await this.#store.replace(this.#desired(lease, now, holder !== this.#identity));
          return this.#took(taken, why === 'free' || why === 'ours' ? 'taken' : `taken over: ${why}`);
        }
        // Held by a live holder: wait, bounded.
        sawOther = true;
        const waited = mono() - started;
        if (announced !== holder) {
          announced = holder;
          const text = `${ref} is held by ${describeHolder(holder)} since ${spec.acquireTime ?? '?'} (renewed ${spec.renewTime ?? '?'}); waiting up to ${Math.round((waitMs - waited) / 1000)} s for it`;
          log.info({ lease: ref, holder, acquireTime: spec.acquireTime, renewTime: spec.renewTime }, text);
          this.#opts.onWait?.(`waiting for ${describeHolder(holder)}, which is bootstrapping the cluster`);
        }
        if (waited >= waitMs) {
          this.#gaveUp = new LeaseHeldError(
            `another node is bootstrapping the cluster: ${ref} is held by ${describeHolder(holder)} (since ${spec.acquireTime ?? '?'}, renewed ${spec.renewTime ?? '?'}); gave up waiting after ${Math.round(waited / 1000)} s, the next run retries`,
          );
          log.warn({ lease: ref, holder }, this.#gaveUp.message);
          throw this.#gaveUp;
        }
        await sleep(Math.min(this.#opts.pollMs ?? Math.min(2000, durationMs / 4), waitMs - waited), this.#stop.signal);
      } catch (e) {
        if (e instanceof LeaseHeldError) throw e;
        if (e instanceof LeaseConflictError) {
          log.debug({ lease: ref, err: e.message }, 'lease changed under us; reading it again');
          continue;
        }
        if (!(e instanceof LeaseUnavailableError)) throw e; // a bug (HTTP 400, 422...): say so, never hide it
        if (sawOther && mono() - started < waitMs) {
          // Another node was seen holding it: a blip of the apiserver while waiting must not
          // turn into writing alongside that node.
          log.warn({ lease: ref, err: message(e) }, `${ref}: ${message(e)}; still waiting`);
          await sleep(1000, this.#stop.signal);
          continue;
        }
        const text = `cannot take ${ref} (${message(e)}); writing without it: no other node can be coordinated with while the apiserver does not answer here`;
        if (text !== this.#lastUnguarded) log.warn({ lease: ref, err: message(e) }, text);
        this.#lastUnguarded = text;
        return undefined;
      }
    }
  }

  #took(lease: LeaseObject, how: string): number {
    this.writes++;
    const since = mono();
    this.#held = { lease, since, renewedAt: since };
    this.#opts.log.info({ lease: ref, holder: this.#identity, durationSeconds: this.#opts.durationSeconds }, `${ref} ${how}; this run (${describeHolder(this.#identity)}) is the one bootstrapping the cluster`);
    this.#scheduleRenew();
    return since;
  }

  /** Every third of the duration (two renewals can fail before another node may take over); sooner after a failure. */
  #scheduleRenew(delayMs = this.#durationMs / 3): void {
    clearTimeout(this.#renewTimer);
    this.#renewTimer = setTimeout(() => {
      this.#renewing = this.#renew()
        .catch((e: unknown) => this.#opts.log.warn({ lease: ref, err: message(e) }, `renewing ${ref}: ${message(e)}`))
        .finally(() => {
          this.#renewing = undefined;
        });
    }, Math.max(200, delayMs));
    // The lease must not keep a finished process alive; the run itself keeps it running.
    this.#renewTimer.unref();
  }

  async #renew(): Promise<void> {
    const held = this.#held;
    if (!held || this.#stop.signal.aborted) return;
    const { log } = this.#opts;
    try {
      const lease = await this.#store.replace(this.#desired(held.lease, microTime(), false));
      this.writes++;
      this.#held = { ...held, lease, renewedAt: mono() };
    } catch (e) {
      if (e instanceof LeaseConflictError) {
        const now = await this.#store.get().then(
          (lease) => ({ read: true as const, lease }),
          (err: unknown) => ({ read: false as const, err }),
        );
        if (now.read && now.lease?.spec?.holderIdentity === this.#identity) {
          this.#held = { ...held, lease: now.lease };
        } else {
          this.#held = undefined;
          log.error({ lease: ref, holder: now.read ? now.lease?.spec?.holderIdentity : undefined }, `lost ${ref} ${lostTo(now, held.lease)}; the next write takes it again`);
          return;
        }
      } else if (mono() - held.renewedAt >= this.#durationMs) {
        this.#held = undefined;
        log.error({ lease: ref, err: message(e) }, `could not renew ${ref} for ${this.#opts.durationSeconds} s (${message(e)}); another node may take it now, so the next write takes it again first`);
        return;
      } else {
        log.warn({ lease: ref, err: message(e) }, `renewing ${ref} failed (${message(e)}); trying again`);
        // A keep-alive connection the apiserver closed meanwhile fails once; do not wait a third of the duration.
        if (!this.#stop.signal.aborted) this.#scheduleRenew(Math.min(1000, this.#durationMs / 6));
        return;
      }
    }
    if (!this.#stop.signal.aborted) this.#scheduleRenew();
  }

  /** Gives the lease back (the next node need not wait for it to expire). Never throws. */
  async release(): Promise<void> {
    this.#stop.abort(new Error('run over'));
    clearTimeout(this.#renewTimer);
    await this.#acquiring?.catch(() => undefined);
    await this.#renewing;
    const held = this.#held;
    this.#held = undefined;
    if (!held) return;
    const lease: LeaseObject = { ...held.lease, metadata: { ...held.lease.metadata, ...withoutManagedFields(held.lease.metadata) } };
    delete lease.metadata.managedFields;
    // Free, as client-go's leader election leaves a released lease: no holder.
    lease.spec = { leaseDurationSeconds: lease.spec?.leaseDurationSeconds ?? this.#opts.durationSeconds, leaseTransitions: lease.spec?.leaseTransitions ?? 0 };
    try {
      await this.#store.replace(lease);
      this.writes++;
      this.#opts.log.info({ lease: ref }, `${ref} released`);
    } catch (e) {
      this.#opts.log.warn({ lease: ref, err: message(e) }, `could not release ${ref} (${message(e)}); it expires by itself after ${this.#opts.durationSeconds} s`);
    }
  }
}

/** Who has the lease now that a renewal found it changed: said only as far as the Lease shows it. */
function lostTo(now: { read: true; lease: LeaseObject | undefined } | { read: false; err: unknown }, ours: LeaseObject): string {
  if (!now.read) return `(it changed, and reading it again failed: ${message(now.err)})`;
  if (!now.lease) return 'to nobody (it was deleted)';
  const holder = now.lease.spec?.holderIdentity;
  if (holder) return `to ${describeHolder(holder)}`;
  const transitions = (now.lease.spec?.leaseTransitions ?? 0) - (ours.spec?.leaseTransitions ?? 0);
  return transitions > 0
    ? `while paused: another holder took it (${transitions} transition${transitions === 1 ? '' : 's'}) and has released it since, so it is free now`
    : 'to nobody: it was released by another client (it is free now)';
}

// ---- the store: the apiserver -----------------------------------------------------------

/**
 * The Lease through the apiserver: a create that fails when it exists (POST) and a replace
 * conditional on resourceVersion (PUT) are what mutual exclusion needs; KubeClient writes by
 * server-side apply only, so this store sends those two verbs over KubeClient's raw requests
 * (same kubeconfig handling, TLS and user agent); errors map through the same apiError().
 */
export class KubeLeaseStore implements LeaseStore {
  readonly kubeconfigPath: string;
  readonly #kube: KubeClient;
  readonly #timeoutMs: number;

  constructor(kubeconfigPath: string, opts: { timeoutMs?: number; log?: Logger } = {}) {
    this.kubeconfigPath = kubeconfigPath;
    this.#kube = new KubeClient(kubeconfigPath, opts.log ?? pino({ level: 'silent' }));
    this.#timeoutMs = opts.timeoutMs ?? 10_000;
  }

  async #call(method: string, path: string, body?: LeaseObject): Promise<RawResponse> {
    try {
      return await this.#kube.raw(method, path, { ...(body === undefined ? {} : { body: JSON.stringify(body) }), timeoutMs: this.#timeoutMs });
    } catch (e) {
      // Unreachable, or a kubeconfig that cannot be used: the run goes on without the lease.
      throw new LeaseUnavailableError(message(e), { cause: e });
    }
  }

  #path(name?: string): string {
    return `/apis/coordination.k8s.io/v1/namespaces/${LEASE_NAMESPACE}/leases${name ? `/${name}` : ''}`;
  }

  #fail(res: RawResponse, what: string): Error {
    if (res.status === 401 || res.status === 403) {
      return new LeaseUnavailableError(`${what}: HTTP ${res.status}: the API server refused the credentials of the kubeconfig ${this.kubeconfigPath}`);
    }
    const err = apiError(res.status, res.headers['retry-after'], res.text, what);
    return err instanceof TransientError ? new LeaseUnavailableError(err.message, { cause: err }) : err;
  }

  async get(): Promise<LeaseObject | undefined> {
    const res = await this.#call('GET', this.#path(LEASE_NAME));
    if (res.status === 404) return undefined;
    if (res.status !== 200) throw this.#fail(res, `get ${ref}`);
    return JSON.parse(res.text) as LeaseObject;
  }

  async create(lease: LeaseObject): Promise<LeaseObject> {
    const res = await this.#call('POST', `${this.#path()}?fieldManager=${FIELD_MANAGER}`, lease);
    if (res.status === 409) throw new LeaseConflictError(`${ref} was created by another node meanwhile`);
    if (res.status !== 201 && res.status !== 200) throw this.#fail(res, `create ${ref}`);
    return JSON.parse(res.text) as LeaseObject;
  }

  async replace(lease: LeaseObject): Promise<LeaseObject> {
    const res = await this.#call('PUT', `${this.#path(LEASE_NAME)}?fieldManager=${FIELD_MANAGER}`, lease);
    if (res.status === 409 || res.status === 404) throw new LeaseConflictError(`${ref} changed meanwhile (HTTP ${res.status})`);
    if (res.status !== 200) throw this.#fail(res, `update ${ref}`);
    return JSON.parse(res.text) as LeaseObject;
  }

  close(): void {
    this.#kube.close();
  }
}

// What the engine retries. Everything else fails the step at once with its message.

/** A condition that may clear by itself (apiserver starting, 5xx, 429, connection reset). */
export class TransientError extends Error {
  override name = 'TransientError';
  /** Server-suggested wait (e.g. Retry-After), in ms. */
  readonly retryAfterMs: number | undefined;
  constructor(message: string, options?: { cause?: unknown; retryAfterMs?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.retryAfterMs = options?.retryAfterMs;
  }
}

const TRANSIENT_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN', 'ENOTFOUND', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT']);

function statusOf(e: Record<string, unknown>): number | undefined {
  for (const k of ['status', 'statusCode', 'code']) {
    const v = e[k];
    if (typeof v === 'number' && v >= 100 && v < 600) return v;
  }
  const body = e.body as Record<string, unknown> | undefined;
  if (body && typeof body.code === 'number') return body.code;
  return undefined;
}

export function isTransient(err: unknown): boolean {
  if (err instanceof TransientError) return true;
  if (!err || typeof err !== 'object') return false;
  const e = err as Record<string, unknown>;
  if (typeof e.code === 'string' && TRANSIENT_CODES.has(e.code)) return true;
  const status = statusOf(e);
  if (status !== undefined) return status === 408 || status === 409 || status === 429 || status >= 500;
  if (e.cause) return isTransient(e.cause);
  return false;
}

// What Go's net/http, client-go and etcd print (helm is Go) when the apiserver restarts or is
// still starting under k3s: the connection drops mid-request (unexpected EOF, reset, GOAWAY,
// lost http2 connection), is refused while it is down, or the handshake times out.
const TRANSIENT_MESSAGES = [
  /Kubernetes cluster unreachable/i,
  /unexpected EOF/i,
  /: EOF\b/,
  /connection refused/i,
  /connection reset by peer/i,
  /broken pipe/i,
  /http2: client connection lost/i,
  /http2: server sent GOAWAY/i,
  /use of closed network connection/i,
  /i\/o timeout/i,
  /TLS handshake timeout/i,
  /context deadline exceeded/i,
  /the server is currently unable to handle the request/i,
  /the server was unable to return a response in the time allotted/i,
  /etcdserver: (request timed out|leader changed|too many requests)/i,
];

/** A Go client's error text (helm's stderr) that names a failure which clears by itself. */
export function isTransientMessage(text: string): boolean {
  return TRANSIENT_MESSAGES.some((re) => re.test(text));
}

export function retryAfterMs(err: unknown): number | undefined {
  return err instanceof TransientError ? err.retryAfterMs : undefined;
}

/**
 * A step that did part of its work and can still hand its outputs on, e.g. the tunnel
 * exists (dns can run) but its token Secret could not be written because the cluster is down.
 */
export class PartialStepError extends Error {
  override name = 'PartialStepError';
  readonly outputs: Record<string, unknown>;
  constructor(message: string, outputs: Record<string, unknown>, cause: unknown) {
    super(message, { cause });
    this.outputs = outputs;
  }
}

/**
 * Everything a step could do is done, but records that belong to someone else stand in the way
 * of some of its changes. Reported (outcome 'conflict', its own exit code), never retried: it
 * lasts until a person acts, and a retry would change nothing.
 */
export class ConflictError extends Error {
  override name = 'ConflictError';
}

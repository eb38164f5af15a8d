// The rig talks to its apiserver over plain HTTPS, not through the client under test, so a bug
// in that client cannot make the rig lie about what the cluster holds.
import { request } from 'node:https';
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';

export interface KubeEndpoint {
  server: string;
  token: string;
  /** PEM bundle that signs the serving certificate. */
  ca: string;
}

export interface KubeResponse {
  status: number;
  body: string;
}

export interface RequestOptions {
  body?: string | object;
  contentType?: string;
  /** null sends no Authorization header at all. */
  token?: string | null;
  timeoutMs?: number;
}

export function endpointFromKubeconfig(kubeconfigPath: string): KubeEndpoint {
  const kc = parse(readFileSync(kubeconfigPath, 'utf8')) as {
    'current-context'?: string;
    contexts?: { name: string; context: { cluster: string; user: string } }[];
    clusters?: { name: string; cluster: { server: string; 'certificate-authority-data'?: string; 'certificate-authority'?: string } }[];
    users?: { name: string; user: { token?: string } }[];
  };
  const ctx = kc.contexts?.find((c) => c.name === kc['current-context']) ?? kc.contexts?.[0];
  const cluster = kc.clusters?.find((c) => c.name === ctx?.context.cluster)?.cluster;
  const user = kc.users?.find((u) => u.name === ctx?.context.user)?.user;
  if (!cluster || !user?.token) throw new Error(`${kubeconfigPath}: the rig needs a kubeconfig with a server and a token user`);
  const ca = cluster['certificate-authority-data']
    ? Buffer.from(cluster['certificate-authority-data'], 'base64').toString('utf8')
    : cluster['certificate-authority']
      ? readFileSync(cluster['certificate-authority'], 'utf8')
      : '';
  return { server: cluster.server, token: user.token, ca };
}

export function kubeRequest(ep: KubeEndpoint, method: string, path: string, opts: RequestOptions = {}): Promise<KubeResponse> {
  const url = new URL(path, ep.server);
  const body = opts.body === undefined ? undefined : typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
  const headers: Record<string, string> = { accept: 'application/json' };
  const token = opts.token === undefined ? ep.token : opts.token;
  if (token !== null) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) {
    headers['content-type'] = opts.contentType ?? 'application/json';
    headers['content-length'] = String(Buffer.byteLength(body));
  }
  return new Promise((resolvePromise, reject) => {
    const req = request(url, { method, headers, ca: ep.ca, timeout: opts.timeoutMs ?? 30_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolvePromise({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${url.pathname}: timed out`)));
    req.on('error', reject);
    req.end(body);
  });
}

/** Like kubeRequest, but a status outside 2xx (and outside `allow`) is an error carrying the body. */
export async function kubeJson<T = unknown>(ep: KubeEndpoint, method: string, path: string, opts: RequestOptions & { allow?: number[] } = {}): Promise<{ status: number; json: T | undefined }> {
  const res = await kubeRequest(ep, method, path, opts);
  const ok = (res.status >= 200 && res.status < 300) || opts.allow?.includes(res.status);
  if (!ok) throw new Error(`${method} ${path}: HTTP ${res.status}: ${res.body.slice(0, 500)}`);
  // An allowed error status may come with a plain-text body ("404 page not found").
  const isOk = res.status >= 200 && res.status < 300;
  return { status: res.status, json: res.body && isOk ? (JSON.parse(res.body) as T) : undefined };
}

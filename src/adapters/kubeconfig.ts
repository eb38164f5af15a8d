// Reads the kubeconfig with @kubernetes/client-node's own entry parsers (config_types.js), not
// with its KubeConfig class: importing the package's index (or its config.js) loads the whole
// generated API, about 90 MiB and most of a second, on every boot and every reconcile, for a
// file that on k3s holds a server, a CA and a client certificate. Users that need code to
// authenticate (exec plugins, auth providers) still go through KubeConfig, loaded then only.
import { readRegularFile, FileReadError } from '../read-file.ts';
import { MAX_CREDENTIAL_BYTES } from '../credentials.ts';
import { dirname, isAbsolute, join } from 'node:path';
import type { AgentOptions, RequestOptions } from 'node:https';
import { parse } from 'yaml';
import { newClusters, newContexts, newUsers } from '@kubernetes/client-node/dist/config_types.js';
import type { Cluster, Context, User } from '@kubernetes/client-node';

export interface KubeconfigAccess {
  server: URL;
  /** The current cluster's name and the field its CA comes from, for TLS error messages. */
  clusterName: string;
  caField: 'certificate-authority' | 'certificate-authority-data';
  /** TLS material for the agent: read once. */
  agent: AgentOptions;
  skipTLSVerify: boolean;
  /** Per-request auth headers (a token, basic auth, or an exec plugin's fresh credential). */
  headers(): Promise<Record<string, string>>;
}

/** Thrown with messages that name the file and never quote it: it holds credentials. */
export class KubeconfigError extends Error {
  override name = 'KubeconfigError';
}

const absolute = (root: string, file: string | undefined): string | undefined => (file && !isAbsolute(file) ? join(root, file) : file);

function fileOrData(file: string | undefined, data: string | undefined): Buffer | undefined {
  // A certificate file is read like every file the user names: regular files only, bounded.
  if (file) return Buffer.from(readRegularFile(file, MAX_CREDENTIAL_BYTES));
  if (data) return Buffer.from(data, 'base64');
  return undefined;
}

export async function loadKubeconfig(path: string): Promise<KubeconfigAccess> {
  let text: string;
  try {
    text = readRegularFile(path, MAX_CREDENTIAL_BYTES);
  } catch (e) {
    throw new KubeconfigError(`kubeconfig ${path} ${e instanceof FileReadError ? e.reason : `cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`}`);
  }
  let doc: Record<string, unknown>;
  let clusters: Cluster[];
  let contexts: Context[];
  let users: User[];
  try {
    // yaml's own messages quote the offending lines; keep only the position.
    doc = (parse(text, { prettyErrors: false }) ?? {}) as Record<string, unknown>;
    if (typeof doc !== 'object' || Array.isArray(doc)) throw new KubeconfigError('not a YAML mapping');
    clusters = newClusters(doc.clusters);
    contexts = newContexts(doc.contexts);
    users = newUsers(doc.users);
  } catch (e) {
    const pos = (e as { linePos?: { line: number }[] }).linePos?.[0];
    const why = pos ? `YAML error at line ${pos.line}` : e instanceof KubeconfigError ? e.message : (e as Error).name === 'YAMLParseError' ? 'YAML error' : (e as Error).message;
    throw new KubeconfigError(`kubeconfig ${path} is not a valid kubeconfig: ${why}`);
  }
  const context = contexts.find((c) => c.name === doc['current-context']);
  const cluster = clusters.find((c) => c.name === context?.cluster);
  if (!cluster?.server) throw new KubeconfigError(`kubeconfig ${path} names no current cluster with a server`);
  const user = users.find((u) => u.name === context?.user);
  const root = dirname(path);
  let server: URL;
  try {
    server = new URL(cluster.server);
  } catch {
    throw new KubeconfigError(`kubeconfig ${path}: the current cluster's server is not a URL`);
  }
  const agent: AgentOptions = {};
  try {
    const ca = fileOrData(absolute(root, cluster.caFile), cluster.caData);
    if (ca) agent.ca = ca;
    const cert = fileOrData(absolute(root, user?.certFile), user?.certData);
    if (cert) agent.cert = cert;
    const key = fileOrData(absolute(root, user?.keyFile), user?.keyData);
    if (key) agent.key = key;
  } catch (e) {
    throw new KubeconfigError(`kubeconfig ${path}: a certificate or key file it names ${e instanceof FileReadError ? e.reason : `cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`}`);
  }
  if (cluster.tlsServerName) agent.servername = cluster.tlsServerName;

  let headers: () => Promise<Record<string, string>>;
  if (user?.exec || user?.authProvider) {
    // Code runs to authenticate: KubeConfig knows every plugin, so let it, per request.
    const { KubeConfig } = await import('@kubernetes/client-node');
    const kc = new KubeConfig();
    kc.loadFromOptions({ clusters, contexts, users, currentContext: String(doc['current-context']) });
    kc.makePathsAbsolute(root);
    headers = async () => {
      const opts: RequestOptions = {};
      await kc.applyToHTTPSOptions(opts);
      const h: Record<string, string> = {};
      for (const [k, v] of Object.entries(opts.headers ?? {})) if (v !== undefined) h[k] = String(v);
      if (opts.auth) h.Authorization = `Basic ${Buffer.from(opts.auth).toString('base64')}`;
      return h;
    };
  } else {
    const h: Record<string, string> = {};
    if (user?.username) h.Authorization = `Basic ${Buffer.from(`${user.username}:${user.password ?? ''}`).toString('base64')}`;
    if (user?.token) h.Authorization = `Bearer ${user.token.trim()}`;
    if (user?.impersonateUser) h['Impersonate-User'] = user.impersonateUser;
    headers = () => Promise.resolve({ ...h });
  }
  return { server, clusterName: cluster.name, caField: cluster.caFile ? 'certificate-authority' : 'certificate-authority-data', agent, skipTLSVerify: cluster.skipTLSVerify, headers };
}

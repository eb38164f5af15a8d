// A real etcd + kube-apiserver on loopback, the way controller-runtime's envtest runs one. By
// default nothing else: namespaces stay Terminating forever, no Pod is ever made. With
// `controllers: true` the rig adds kube-controller-manager, kube-scheduler and a kwok node
// (node-sim.ts): workloads then roll out on a simulated node as on a one-node k3s.
import { generateKeyPairSync, randomBytes, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { binPath } from './binaries.ts';
import { kubeRequest, type KubeEndpoint } from './kube-http.ts';
import { startNodeSim } from './node-sim.ts';
import { killTied, removeOnExit, spawnTied, type TiedProcess } from './processes.ts';

export interface ControlPlaneOptions {
  /** RBAC like k3s (default); AlwaysAllow skips the RBAC bootstrap for a slightly faster start. */
  authorizationMode?: 'RBAC' | 'AlwaysAllow';
  extraApiserverArgs?: string[];
  /** kube-controller-manager, kube-scheduler and a kwok node; off by default, it costs start-up time. */
  controllers?: boolean;
  readyTimeoutMs?: number;
  /** Where the readiness time and failures are reported; defaults to stderr unless HB_RIG_QUIET is set. */
  log?: (line: string) => void;
}

export interface ControlPlane {
  dir: string;
  /** Kubeconfig of the test user: the identity the code under test uses, and the one audit counts. */
  kubeconfigPath: string;
  server: string;
  token: string;
  /** Username of `token` as it appears in the audit log. */
  user: string;
  /** PEM bundle of the self-signed serving certificate and its CA. */
  ca: string;
  auditLogPath: string;
  /** A second admin identity for the rig's own requests, so they never show up in the test user's counts. */
  rig: KubeEndpoint;
  rigUser: string;
  pids: { etcd: number; apiserver: number; controllerManager?: number; scheduler?: number; kwok?: number };
  readyMs: number;
  /** Of readyMs, the part spent starting the controllers and the node (0 without them). */
  controllersMs: number;
  stop(): Promise<void>;
}

export const TEST_USER = 'hb-test';
export const RIG_USER = 'hb-rig';
/** The identities of the simulated cluster's own components, each apart in the audit log. */
const COMPONENT_USERS = { controllerManager: 'hb-kube-controller-manager', scheduler: 'hb-kube-scheduler', kwok: 'hb-kwok' } as const;

const AUDIT_POLICY = {
  apiVersion: 'audit.k8s.io/v1',
  kind: 'Policy',
  // RequestReceived would double every line; long-running requests still get ResponseStarted.
  omitStages: ['RequestReceived'],
  rules: [{ level: 'Metadata' }],
};

export async function startControlPlane(opts: ControlPlaneOptions = {}): Promise<ControlPlane> {
  const log = opts.log ?? ((line: string) => void (process.env.HB_RIG_QUIET ? undefined : process.stderr.write(`${line}\n`)));
  // Free ports are picked then released, so another process can take one in between; retry then.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(opts, log);
    } catch (err) {
      if (attempt < 3 && err instanceof PortTakenError) {
        log(`rig: ${err.message}; retrying with new ports`);
        continue;
      }
      throw err;
    }
  }
}

class PortTakenError extends Error {}

async function startOnce(opts: ControlPlaneOptions, log: (line: string) => void): Promise<ControlPlane> {
  const started = performance.now();
  const etcdBin = binPath('etcd');
  const apiserverBin = binPath('kube-apiserver');
  const dir = mkdtempSync(join(tmpdir(), 'hb-rig-'));
  const keepDir = Boolean(process.env.HB_RIG_KEEP);
  const forgetDir = keepDir ? () => false : removeOnExit(dir);
  const procs: TiedProcess[] = [];
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    // Last started first (the controllers, then the apiserver): killed etcd makes the apiserver spin on reconnects.
    for (const p of procs.slice().reverse()) await killTied(p);
    if (!keepDir) rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
    forgetDir();
  };

  try {
    const [etcdClient, etcdPeer, securePort] = await freePorts(3);
    const testToken = randomBytes(24).toString('hex');
    const rigToken = randomBytes(24).toString('hex');
    const tokens = new Map<string, string>([[TEST_USER, testToken], [RIG_USER, rigToken]]);
    for (const user of Object.values(COMPONENT_USERS)) tokens.set(user, randomBytes(24).toString('hex'));
    writeFileSync(join(dir, 'tokens.csv'), [...tokens].map(([user, token]) => `${token},${user},${user},"system:masters"\n`).join(''), { mode: 0o600 });
    // EC keys: generating them is instant, unlike RSA, and the apiserver signs ES256 tokens fine.
    const sa = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    writeFileSync(join(dir, 'sa.key'), sa.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    writeFileSync(join(dir, 'sa.pub'), sa.publicKey.export({ type: 'spki', format: 'pem' }));
    writeFileSync(join(dir, 'audit-policy.yaml'), JSON.stringify(AUDIT_POLICY));
    const auditLogPath = join(dir, 'audit.log');

    const etcdUrl = `http://127.0.0.1:${etcdClient}`;
    const peerUrl = `http://127.0.0.1:${etcdPeer}`;
    const etcd = spawnTied('etcd', etcdBin, [
      '--name=rig',
      `--data-dir=${join(dir, 'etcd')}`,
      `--listen-client-urls=${etcdUrl}`,
      `--advertise-client-urls=${etcdUrl}`,
      `--listen-peer-urls=${peerUrl}`,
      `--initial-advertise-peer-urls=${peerUrl}`,
      `--initial-cluster=rig=${peerUrl}`,
      // Throwaway data: durability only costs time.
      '--unsafe-no-fsync',
      '--quota-backend-bytes=536870912',
      '--log-level=warn',
    ], join(dir, 'etcd.log'));
    procs.push(etcd);

    const certDir = join(dir, 'pki');
    const apiserver = spawnTied('kube-apiserver', apiserverBin, [
      `--etcd-servers=${etcdUrl}`,
      '--bind-address=127.0.0.1',
      '--advertise-address=127.0.0.1',
      `--secure-port=${securePort}`,
      // Self-signed serving cert (with its CA in the same file); the SANs include the bind address.
      `--cert-dir=${certDir}`,
      `--token-auth-file=${join(dir, 'tokens.csv')}`,
      '--anonymous-auth=false',
      `--authorization-mode=${opts.authorizationMode ?? 'RBAC'}`,
      '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
      `--service-account-key-file=${join(dir, 'sa.pub')}`,
      `--service-account-signing-key-file=${join(dir, 'sa.key')}`,
      '--service-cluster-ip-range=10.43.0.0/16',
      `--audit-policy-file=${join(dir, 'audit-policy.yaml')}`,
      `--audit-log-path=${auditLogPath}`,
      '--audit-log-format=json',
      '--audit-log-mode=blocking',
      // ServiceAccount: needs the token controller of kube-controller-manager, which the rig does
      // not run. TaintNodesByCondition: it taints a new node not-ready until the node lifecycle
      // controller lifts it; that controller would also evict the Pods of a node without heartbeats.
      '--disable-admission-plugins=ServiceAccount,TaintNodesByCondition',
      // Fewer bootstrap objects and goroutines on a small machine.
      '--enable-priority-and-fairness=false',
      // 127.0.0.1 is not a valid endpoint for the kubernetes Service; do not try to publish it.
      '--endpoint-reconciler-type=none',
      '--allow-privileged=true',
      '--profiling=false',
      ...(opts.extraApiserverArgs ?? []),
    ], join(dir, 'apiserver.log'));
    procs.push(apiserver);

    // The apiserver starts meanwhile: its own start-up takes longer than etcd's, and it retries etcd.
    await waitFor('etcd', etcd, opts.readyTimeoutMs ?? 60_000, async () => {
      const res = await fetch(`${etcdUrl}/health`, { signal: AbortSignal.timeout(1000) }).catch(() => undefined);
      return res?.ok === true && ((await res.json()) as { health?: string }).health === 'true';
    });
    const etcdMs = Math.round(performance.now() - started);

    const server = `https://127.0.0.1:${securePort}`;
    const rig: KubeEndpoint = { server, token: rigToken, ca: '' };
    await waitFor('kube-apiserver', apiserver, opts.readyTimeoutMs ?? 60_000, async () => {
      rig.ca = readCertBundle(join(certDir, 'apiserver.crt')) ?? '';
      if (!rig.ca) return false;
      const ready = await kubeRequest(rig, 'GET', '/readyz', { timeoutMs: 2000 }).catch(() => undefined);
      if (ready?.status !== 200) return false;
      // The default namespace is made by a bootstrap loop that /readyz does not wait for.
      const ns = await kubeRequest(rig, 'GET', '/api/v1/namespaces/default', { timeoutMs: 2000 }).catch(() => undefined);
      return ns?.status === 200;
    });

    const kubeconfigPath = join(dir, 'kubeconfig');
    writeFileSync(kubeconfigPath, kubeconfig(server, rig.ca, TEST_USER, testToken), { mode: 0o600 });
    writeFileSync(join(dir, 'rig-kubeconfig'), kubeconfig(server, rig.ca, RIG_USER, rigToken), { mode: 0o600 });

    let controllersMs = 0;
    let sim: Awaited<ReturnType<typeof startNodeSim>> | undefined;
    if (opts.controllers) {
      const simStarted = performance.now();
      const kubeconfigs = Object.fromEntries(
        Object.entries(COMPONENT_USERS).map(([k, user]) => {
          const path = join(dir, `${k}.kubeconfig`);
          writeFileSync(path, kubeconfig(server, rig.ca, user, tokens.get(user)!), { mode: 0o600 });
          return [k, path];
        }),
      ) as Record<keyof typeof COMPONENT_USERS, string>;
      sim = await startNodeSim({ dir, rig, saKeyFile: join(dir, 'sa.key'), kubeconfigs, timeoutMs: opts.readyTimeoutMs ?? 60_000, track: (p) => procs.push(p) });
      controllersMs = Math.round(performance.now() - simStarted);
    }

    const readyMs = Math.round(performance.now() - started);
    log(`rig: kube-apiserver ready at ${server} in ${readyMs} ms (etcd after ${etcdMs} ms${opts.controllers ? `; controllers and the kwok node took ${controllersMs} ms of it` : ''}; dir ${dir})`);
    return {
      dir,
      kubeconfigPath,
      server,
      token: testToken,
      user: TEST_USER,
      ca: rig.ca,
      auditLogPath,
      rig,
      rigUser: RIG_USER,
      pids: { etcd: etcd.pid, apiserver: apiserver.pid, ...sim?.pids },
      readyMs,
      controllersMs,
      stop,
    };
  } catch (err) {
    const detail = procs.map((p) => `--- ${p.name} log (last lines) ---\n${p.logTail()}`).join('\n');
    await stop().catch(() => undefined);
    const msg = err instanceof Error ? err.message : String(err);
    if (/address already in use/.test(detail)) throw new PortTakenError(`a picked port was taken: ${msg}`);
    throw new Error(`${msg}\n${detail}`, { cause: err });
  }
}

async function waitFor(name: string, proc: TiedProcess, timeoutMs: number, ready: () => Promise<boolean>): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (!proc.isRunning()) throw new Error(`${name} exited during startup (code ${proc.child.exitCode}, signal ${proc.child.signalCode})`);
    if (await ready()) return;
    if (performance.now() > deadline) throw new Error(`${name} was not ready within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The file (serving cert, then its CA) is written while the apiserver starts; read it until it is whole. */
function readCertBundle(path: string): string | undefined {
  try {
    const pem = readFileSync(path, 'utf8');
    const certs = pem.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? [];
    if (certs.length < 2) return undefined;
    for (const c of certs) new X509Certificate(c);
    return pem;
  } catch {
    return undefined;
  }
}

function kubeconfig(server: string, ca: string, user: string, token: string): string {
  return stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'rig', cluster: { server, 'certificate-authority-data': Buffer.from(ca).toString('base64') } }],
    users: [{ name: user, user: { token } }],
    contexts: [{ name: 'rig', context: { cluster: 'rig', user, namespace: 'default' } }],
    'current-context': 'rig',
  });
}

/** Holds all listeners open together so the ports are distinct. */
async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: n }, () => new Promise<ReturnType<typeof createServer>>((resolve, reject) => {
      const s = createServer();
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => resolve(s));
    })),
  );
  const ports = servers.map((s) => {
    const addr = s.address();
    if (addr === null || typeof addr === 'string') throw new Error('no TCP address');
    return addr.port;
  });
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

// What an independent probe broke (issue 17), each on the rig: objects the daemon owns that another
// client touched are taken back (and the plan says whose change); an apiserver that accepts and
// never answers fails the cluster part once, within a bound, while Cloudflare converges; inputs
// that never end (a FIFO, /dev/zero) are refused at once with bounded memory; TLS mistakes in the
// kubeconfig name the file and field; a paused Lease holder says truly what happened to its Lease.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { binPath, repoRoot } from '../rig/binaries.ts';
import { kubeJson } from '../rig/kube-http.ts';
import { changeCount, CLI, outcomes, runToEnd, startSite, ZONE, type Site } from '../rig/bootstrap-run.ts';
import { createLogger } from '../../src/log.ts';
import { KubeClient } from '../../src/adapters/kube.ts';
import { BootstrapLease, bootId, KubeLeaseStore, LEASE_NAME, LEASE_NAMESPACE, type LeaseObject, type LeaseStore } from '../../src/engine/lease.ts';

let site: Site;

before(async () => {
  site = await startSite();
});

after(async () => {
  await site?.stop();
});

function capture(): { log: ReturnType<typeof createLogger>; lines: string[] } {
  const lines: string[] = [];
  const sink = new Writable({ write: (c, _e, cb) => (lines.push(String(c)), cb()) });
  return { log: createLogger({ level: 'debug', pretty: false, destination: sink }), lines };
}

/** kubectl as a person at the cluster would run it (the rig's admin identity, its own field managers). */
function kubectl(args: string[], input?: string): string {
  return execFileSync(binPath('kubectl'), ['--kubeconfig', join(site.cp.dir, 'rig-kubeconfig'), ...args], { encoding: 'utf8', ...(input ? { input } : {}) });
}

/** A copy of the site's settings with some fields changed; returns its path. */
function configWith(name: string, change: (s: Record<string, any>) => void): string {
  const s = structuredClone(site.settings);
  change(s);
  const file = join(site.dir, `${name}.json`);
  writeFileSync(file, JSON.stringify(s, null, 2));
  return file;
}

/** `plan` (runToEnd always runs apply): exit code and its stdout, the plan itself. Async: the emulator answers from this process. */
function plan(stateDir: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'plan', '--config', site.config, '--state-dir', stateDir], { env: site.env, stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, out }));
  });
}

const tunnelTokenNow = async (): Promise<string> => {
  const r = await kubeJson<{ data: { token: string } }>(site.cp.rig, 'GET', '/api/v1/namespaces/cloudflared/secrets/tunnel-token');
  return Buffer.from(r.json!.data.token, 'base64').toString('utf8');
};

describe('objects the daemon owns, touched by someone else', () => {
  it('a cold apply converges (the reference the cases below start from)', async () => {
    const run = await runToEnd(site, { stateDir: join(site.dir, 'state-owned') });
    assert.equal(outcomes(run).tunnel, 'changed');
  });

  const expected = () => site.emu.tunnelToken(site.emu.liveTunnels()[0]!.id);

  for (const how of ['created by hand before the first run (kubectl create secret)', 'created with a client-side kubectl apply', 'edited (kubectl patch)'] as const) {
    it(`the tunnel-token Secret ${how}: plan names the other manager, apply takes it back, the next run has nothing to do`, async () => {
      const manager = { 'created by hand before the first run (kubectl create secret)': 'kubectl-create', 'created with a client-side kubectl apply': 'kubectl-client-side-apply', 'edited (kubectl patch)': 'kubectl-patch' }[how];
      const wrong = 'a-hand-made-tunnel-token-of-an-old-tunnel';
      if (manager === 'kubectl-patch') {
        kubectl(['patch', 'secret', 'tunnel-token', '-n', 'cloudflared', '--type', 'merge', '-p', JSON.stringify({ data: { token: Buffer.from(wrong).toString('base64') } })]);
      } else {
        kubectl(['delete', 'secret', 'tunnel-token', '-n', 'cloudflared', '--ignore-not-found']);
        if (manager === 'kubectl-create') kubectl(['create', 'secret', 'generic', 'tunnel-token', '-n', 'cloudflared', `--from-literal=token=${wrong}`]);
        else kubectl(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'Secret', metadata: { name: 'tunnel-token', namespace: 'cloudflared' }, type: 'Opaque', stringData: { token: wrong } }));
      }
      assert.equal(await tunnelTokenNow(), wrong);
      const stateDir = join(site.dir, 'state-owned');
      const p = await plan(stateDir);
      assert.equal(p.code, 2, p.out);
      const planText = p.out;
      assert.match(planText, new RegExp(`~ update Secret cloudflared/tunnel-token: overwrites the change of ${manager} \\(Update\\) to \\$\\.data\\.token: the daemon owns this object`), planText);
      assert.ok(!planText.includes(wrong), 'the plan printed the token');

      const apply = await runToEnd(site, { stateDir, args: ['--only', 'tunnel'] });
      assert.equal(outcomes(apply).tunnel, 'changed');
      const warned = apply.lines.find((l) => /Secret cloudflared\/tunnel-token: overwrites the change of/.test(String(l.msg)));
      assert.ok(warned, 'the log does not say whose change was overwritten');
      assert.match(String(warned.msg), new RegExp(manager));
      assert.equal(await tunnelTokenNow(), expected());
      const again = await runToEnd(site, { stateDir, args: ['--only', 'tunnel'] });
      assert.equal(changeCount(again), 0);
    });
  }

  it('the IP pool and the root ApplicationSet edited with kubectl patch are taken back; the plan names kubectl-patch', async () => {
    kubectl(['patch', 'ciliumloadbalancerippool', 'homelab', '--type', 'merge', '-p', JSON.stringify({ spec: { blocks: [{ start: '10.99.0.1', stop: '10.99.0.9' }] } })]);
    kubectl(['patch', 'applicationset', 'homelab', '-n', 'argocd', '--type', 'merge', '-p', JSON.stringify({ spec: { goTemplate: false } })]);
    const stateDir = join(site.dir, 'state-owned');
    const p = await plan(stateDir);
    assert.equal(p.code, 2, p.out);
    const planText = p.out;
    assert.match(planText, /~ update CiliumLoadBalancerIPPool homelab: overwrites the change of kubectl-patch \(Update\) to \$\.spec\.blocks/, planText);
    assert.match(planText, /~ update ApplicationSet argocd\/homelab: overwrites the change of kubectl-patch \(Update\) to \$\.spec\.goTemplate/, planText);
    const apply = await runToEnd(site, { stateDir });
    assert.equal(outcomes(apply)['cilium-l2'], 'changed');
    assert.equal(outcomes(apply)['root-appset'], 'changed');
    const pool = await kubeJson<{ spec: { blocks: { start: string }[] } }>(site.cp.rig, 'GET', '/apis/cilium.io/v2/ciliumloadbalancerippools/homelab');
    assert.equal(pool.json!.spec.blocks[0]!.start, site.settings.network.lbPool.start);
    const again = await runToEnd(site, { stateDir });
    assert.equal(changeCount(again), 0);
  });

  it('an object the daemon does not own is never forced: another client’s pool is left alone', async () => {
    kubectl(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'cilium.io/v2', kind: 'CiliumLoadBalancerIPPool', metadata: { name: 'someone-elses' }, spec: { blocks: [{ start: '10.98.0.1', stop: '10.98.0.2' }] } }));
    const run = await runToEnd(site, { stateDir: join(site.dir, 'state-owned') });
    assert.equal(changeCount(run), 0);
    const pool = await kubeJson<{ metadata: { managedFields: { manager: string }[] } }>(site.cp.rig, 'GET', '/apis/cilium.io/v2/ciliumloadbalancerippools/someone-elses');
    assert.deepEqual(pool.json!.metadata.managedFields.map((m) => m.manager), ['kubectl-client-side-apply']);
  });
});

/** A TCP server on loopback that accepts every connection and never sends a byte. */
async function blackHole(): Promise<{ port: number; accepted: () => number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  let count = 0;
  const server = createServer((s) => {
    count++;
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as { port: number }).port,
    accepted: () => count,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

describe('an apiserver that accepts connections and never answers', () => {
  let hole: Awaited<ReturnType<typeof blackHole>>;
  let config: string;
  before(async () => {
    hole = await blackHole();
    const kubeconfig = join(site.dir, 'kubeconfig-black-hole');
    writeFileSync(kubeconfig, readFileSync(site.cp.kubeconfigPath, 'utf8').replace(site.cp.server, `https://127.0.0.1:${hole.port}`), { mode: 0o600 });
    config = configWith('black-hole', (s) => (s.kubeconfigFile = kubeconfig));
  });
  after(async () => {
    await hole?.close();
  });

  const resetCloudflare = () => {
    site.emu.tunnels.clear();
    site.emu.zone(ZONE).records.clear();
  };

  it('the periodic reconcile (--only tunnel --only dns): DNS converges; the Secret write fails once, named, within 10 s per request', async (t) => {
    resetCloudflare();
    const run = await runToEnd({ ...site, config }, { stateDir: join(site.dir, 'state-hole-reconcile'), args: ['--only', 'tunnel', '--only', 'dns'], expect: 1 });
    assert.ok(hole.accepted() > 0, 'nothing connected to the black hole');
    assert.equal(outcomes(run).dns, 'changed');
    assert.equal(site.emu.records(ZONE).length, (site.settings.hosts as unknown[]).length, "a record per host");
    assert.equal(site.emu.liveTunnels().length, 1);
    const tunnel = run.lines.find((l) => l.step === 'tunnel' && l.event === 'finish');
    assert.equal(tunnel?.outcome, 'failed');
    assert.equal(tunnel?.attempts, 1, 'an unanswering apiserver was retried');
    assert.match(String(tunnel?.err), new RegExp(`is in place, but Secret cloudflared/tunnel-token was not written: .*the API server at https://127\\.0\\.0\\.1:${hole.port} \\(kubeconfig \\S+kubeconfig-black-hole\\) accepted the connection but sent no answer within 10 s`));
    t.diagnostic(`reconcile against a black hole: ${run.ms} ms`);
    // One request timeout for the Secret read, one for the Lease: then nothing waits any more.
    assert.ok(run.ms < 45_000, `the reconcile took ${run.ms} ms`);
  });

  it('a full apply: preflight gives up after 60 s of silence with one clear message, Cloudflare converges meanwhile', async () => {
    resetCloudflare();
    const run = await runToEnd({ ...site, config }, { stateDir: join(site.dir, 'state-hole-full'), expect: 1 });
    const pre = run.lines.find((l) => l.step === 'preflight' && l.event === 'finish');
    assert.equal(pre?.outcome, 'failed');
    assert.match(String(pre?.err), new RegExp(`API server https://127\\.0\\.0\\.1:${hole.port} accepts connections but answered none of \\d+ /readyz tries in [3-6]\\d s \\(kubeconfig \\S+kubeconfig-black-hole\\)`));
    const summary = run.text.join('\n');
    for (const s of ['cilium', 'cilium-crds', 'cilium-l2', 'age-key', 'argocd', 'root-appset']) assert.match(summary, new RegExp(`^${s} +blocked `, 'm'), summary);
    assert.equal(outcomes(run).dns, 'changed');
    assert.equal(site.emu.records(ZONE).length, (site.settings.hosts as unknown[]).length, "a record per host");
    // DNS did not wait for the cluster part.
    const dnsDone = run.lines.find((l) => l.step === 'dns' && l.event === 'finish');
    assert.ok(Date.parse(String(dnsDone?.time)) < Date.parse(String(pre?.time)), 'dns finished only after preflight gave up');
    assert.ok(run.ms < 100_000, `the run took ${run.ms} ms`);
  });
});

/** The CLI through test/fixtures/cli-rusage.ts: exit code, output, time and peak memory. */
function cliWithRusage(args: string[], timeoutMs = 60_000): Promise<{ code: number | null; out: string; ms: number; maxRssMb: number }> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const child = spawn(process.execPath, [join(repoRoot, 'test', 'fixtures', 'cli-rusage.ts'), ...args], { env: site.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c));
    child.stderr.on('data', (c: Buffer) => (out += c));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      const kb = Number(/HB_MAX_RSS_KB=(\d+)/.exec(out)?.[1] ?? NaN);
      resolve({ code, out, ms: performance.now() - started, maxRssMb: kb / 1024 });
    });
  });
}

describe('inputs that never end', () => {
  let fifo: string;
  before(() => {
    fifo = join(site.dir, 'no-writer.fifo');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
  });

  for (const kind of ['fifo', 'zero'] as const) {
    it(`--config ${kind === 'fifo' ? 'a FIFO without a writer' : '/dev/zero'}: exit 65 at once, the file named, memory bounded`, async (t) => {
      const path = kind === 'fifo' ? fifo : '/dev/zero';
      const r = await cliWithRusage(['apply', '--config', path, '--state-dir', join(site.dir, 'state-never-ends')]);
      assert.equal(r.code, 65, r.out);
      assert.match(r.out, new RegExp(`${path}: invalid settings:\\n  - the settings file is (a named pipe \\(FIFO\\)|a character device), not a regular file; pass a JSON file with --config`));
      t.diagnostic(`${Math.round(r.ms)} ms, peak ${Math.round(r.maxRssMb)} MiB`);
      assert.ok(r.ms < 15_000, `took ${r.ms} ms`);
      assert.ok(r.maxRssMb < 300, `peak memory ${r.maxRssMb} MiB`);
    });

    for (const cred of ['age key', 'API token', 'kubeconfig'] as const) {
      it(`the ${cred} is ${kind === 'fifo' ? 'a FIFO without a writer' : '/dev/zero'}: a clear error naming the file and field, bounded time and memory`, async (t) => {
        resetCloudflareSoft();
        const path = kind === 'fifo' ? fifo : '/dev/zero';
        const config = configWith(`never-ends-${kind}-${cred.replace(' ', '-')}`, (s) => {
          if (cred === 'age key') s.sops.ageKeyFile = path;
          if (cred === 'API token') s.cloudflare.apiTokenFile = path;
          if (cred === 'kubeconfig') s.kubeconfigFile = path;
        });
        // The token is only read by the Cloudflare steps: run those (the reconcile's) to keep this quick.
        const only = cred === 'API token' ? ['--only', 'tunnel', '--only', 'dns'] : [];
        const r = await cliWithRusage(['apply', '--config', config, '--state-dir', join(site.dir, `state-never-ends-${kind}`), ...only]);
        assert.equal(r.code, 1, r.out);
        const name = { 'age key': 'age-key', 'API token': 'cloudflare-api-token', kubeconfig: 'kubeconfig' }[cred];
        const field = { 'age key': '$.sops.ageKeyFile', 'API token': '$.cloudflare.apiTokenFile', kubeconfig: '$.kubeconfigFile' }[cred];
        assert.ok(
          r.out.includes(`${name} credential ${path} (${field}) is ${kind === 'fifo' ? 'a named pipe (FIFO)' : 'a character device'}, not a regular file; it cannot be the ${name} (wrong path?)`),
          r.out.slice(-3000),
        );
        t.diagnostic(`${Math.round(r.ms)} ms, peak ${Math.round(r.maxRssMb)} MiB`);
        assert.ok(r.ms < 40_000, `took ${r.ms} ms`);
        assert.ok(r.maxRssMb < 300, `peak memory ${r.maxRssMb} MiB`);
      });
    }
  }

  function resetCloudflareSoft(): void {
    site.emu.clearFaults();
  }
});

describe('messages', () => {
  it('a wrong CA in the kubeconfig names the kubeconfig file, its cluster and the field', async () => {
    const otherCa = readFileSync('/etc/ssl/certs/ca-certificates.crt', 'utf8').split('-----END CERTIFICATE-----')[0] + '-----END CERTIFICATE-----\n';
    const kubeconfig = join(site.dir, 'kubeconfig-wrong-ca');
    const text = readFileSync(site.cp.kubeconfigPath, 'utf8').replace(/certificate-authority-data: \S+/, `certificate-authority-data: ${Buffer.from(otherCa).toString('base64')}`);
    assert.notEqual(text, readFileSync(site.cp.kubeconfigPath, 'utf8'));
    writeFileSync(kubeconfig, text, { mode: 0o600 });
    const kube = new KubeClient(kubeconfig, capture().log);
    await assert.rejects(kube.readyzStatus(), (e: Error) => {
      assert.match(e.message, new RegExp(`the API server at ${site.cp.server.replace(/\./g, '\\.')} presented a certificate that the CA in kubeconfig ${kubeconfig}, cluster "rig" \\(field certificate-authority-data\\) does not verify \\([A-Z_]+\\)`));
      return true;
    });
    kube.close();
  });

  it('a plain-HTTP server behind an https:// server field says so and names the field', async () => {
    const kubeconfig = join(site.dir, 'kubeconfig-plain-http');
    const plain = site.emu.baseUrl.replace(/^http:\/\//, 'https://').replace(/\/client\/v4\/?$/, '');
    const origin = new URL(plain).origin;
    writeFileSync(kubeconfig, readFileSync(site.cp.kubeconfigPath, 'utf8').replace(site.cp.server, origin), { mode: 0o600 });
    const kube = new KubeClient(kubeconfig, capture().log);
    await assert.rejects(kube.get('v1', 'Namespace', 'default'), (e: Error) => {
      assert.match(e.message, new RegExp(`the server at ${origin.replace(/\./g, '\\.')} does not speak TLS \\(is it plain HTTP, or another service on that port\\?\\); check the server field of kubeconfig ${kubeconfig}, cluster "rig"`));
      return true;
    });
    kube.close();
  });

  it('a paused Lease holder whose Lease another node took and released says so (not "deleted")', async () => {
    await kubeJson(site.cp.rig, 'DELETE', `/apis/coordination.k8s.io/v1/namespaces/${LEASE_NAMESPACE}/leases/${LEASE_NAME}`, { allow: [404] });
    // A store whose writes hang while "paused", as a SIGSTOPped process's would.
    const inner = new KubeLeaseStore(site.cp.kubeconfigPath);
    let resume: () => void = () => {};
    let paused: Promise<void> | undefined;
    const pausable: LeaseStore = {
      get: () => inner.get(),
      create: (l: LeaseObject) => inner.create(l),
      replace: async (l: LeaseObject) => {
        await paused;
        return inner.replace(l);
      },
    };
    const a = capture();
    const holderA = new BootstrapLease(pausable, { durationSeconds: 2, waitSeconds: 30, node: 'node-a', holder: { node: 'node-a', pid: process.pid, boot: bootId() }, log: a.log, pollMs: 100 });
    const b = capture();
    const storeB = new KubeLeaseStore(site.cp.kubeconfigPath);
    const holderB = new BootstrapLease(storeB, { durationSeconds: 2, waitSeconds: 30, node: 'node-b', holder: { node: 'node-b', pid: process.pid, boot: bootId() }, log: b.log, pollMs: 100 });
    await holderA.acquire();
    paused = new Promise((r) => (resume = r));
    await holderB.acquire(); // after node-a's two seconds ran out
    await holderB.release();
    resume();
    const deadline = Date.now() + 15_000;
    let lost: string | undefined;
    while (!lost && Date.now() < deadline) {
      lost = a.lines.find((l) => /lost Lease/.test(l));
      await sleep(100);
    }
    await holderA.release();
    inner.close();
    storeB.close();
    assert.ok(lost, 'node-a never noticed');
    const msg = String((JSON.parse(lost) as { msg: string }).msg);
    assert.ok(!/deleted/.test(msg), msg);
    assert.match(msg, /lost Lease kube-system\/homelab-bootstrap while paused: another holder took it \(1 transition\) and has released it since, so it is free now; the next write takes it again/);
  });
});

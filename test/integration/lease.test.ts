// Several k3s servers each run the daemon: the Lease kube-system/homelab-bootstrap lets exactly one
// of them bootstrap at a time. Two "nodes" here are two CLI processes (own --state-dir each)
// against one real kube-apiserver; the lease logic itself is also driven in-process against the
// same apiserver, where timing is easier to pin down.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { auditMark, countRequests } from '../rig/audit.ts';
import { kubeJson, kubeRequest } from '../rig/kube-http.ts';
import { changeCount, cleanRunEndState, endState, outcomes, runToEnd, startCli, startSite, type EndState, type LogLine, type Site } from '../rig/bootstrap-run.ts';
import { pino } from 'pino';
import { createLogger } from '../../src/log.ts';
import { parseSettings } from '../../src/settings/load.ts';
import { runSteps, type RunOptions } from '../../src/engine/run.ts';
import { TransientError } from '../../src/engine/errors.ts';
import type { Step, StepName } from '../../src/steps/types.ts';
import { BootstrapLease, bootId, holderIdentity, KubeLeaseStore, LeaseHeldError, LEASE_NAME, LEASE_NAMESPACE, type LeaseObject } from '../../src/engine/lease.ts';

const LEASE_PATH = `/apis/coordination.k8s.io/v1/namespaces/${LEASE_NAMESPACE}/leases/${LEASE_NAME}`;
const micro = (d = new Date()) => d.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');

let site: Site;
let reference: EndState;

function capture(): { log: ReturnType<typeof createLogger>; lines: string[] } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(String(chunk));
      cb();
    },
  });
  return { log: createLogger({ level: 'debug', pretty: false, destination: sink }), lines };
}

async function readLease(s: Site): Promise<LeaseObject | undefined> {
  const r = await kubeJson<LeaseObject>(s.cp.rig, 'GET', LEASE_PATH, { allow: [404] });
  return r.status === 404 ? undefined : r.json;
}

async function deleteLease(s: Site): Promise<void> {
  await kubeJson(s.cp.rig, 'DELETE', LEASE_PATH, { allow: [404] });
}

/** The lease as another node's live run leaves it, written by the rig. */
async function putForeignLease(s: Site, holder: string, durationSeconds: number): Promise<void> {
  const now = micro();
  const cur = await readLease(s);
  const body = {
    apiVersion: 'coordination.k8s.io/v1',
    kind: 'Lease',
    metadata: { name: LEASE_NAME, namespace: LEASE_NAMESPACE, ...(cur ? { resourceVersion: cur.metadata.resourceVersion } : {}) },
    spec: { holderIdentity: holder, leaseDurationSeconds: durationSeconds, acquireTime: now, renewTime: now, leaseTransitions: 0 },
  };
  if (cur) await kubeJson(s.cp.rig, 'PUT', LEASE_PATH, { body });
  else await kubeJson(s.cp.rig, 'POST', `/apis/coordination.k8s.io/v1/namespaces/${LEASE_NAMESPACE}/leases`, { body });
}

const leaseLine = (l: LogLine, what: RegExp) => typeof l.lease === 'string' && what.test(String(l.msg));
const timeOf = (l: LogLine | undefined) => (l?.time ? Date.parse(l.time) : NaN);

let referenceReady: Promise<void>;

before(async () => {
  // The end state of one clean run on its own cluster: what two racing nodes must add up to.
  // It goes on while the first test runs; comparisons await it.
  referenceReady = cleanRunEndState().then((r) => void (reference = r));
  referenceReady.catch(() => {}); // reported where awaited
  site = await startSite();
});

after(async () => {
  await site?.stop();
});

describe('two nodes, one cluster (CLI processes)', () => {
  it('exactly one bootstraps; the other waits for the lease, then finds nothing to do; the end state equals a clean run', async () => {
    const holders: { at: number; holder: string }[] = [];
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        const l = await readLease(site).catch(() => undefined);
        const h = l?.spec?.holderIdentity ?? '';
        if (holders.at(-1)?.holder !== h) holders.push({ at: Date.now(), holder: h });
        await sleep(50);
      }
    })();
    const a = startCli(site, { stateDir: join(site.dir, 'node-a'), env: { HOMELAB_BOOTSTRAP_NODE_NAME: 'node-a' } });
    const b = startCli(site, { stateDir: join(site.dir, 'node-b'), env: { HOMELAB_BOOTSTRAP_NODE_NAME: 'node-b' } });
    const [ea, eb] = await Promise.all([a.exited, b.exited]);
    watching = false;
    await watcher;
    assert.equal(ea.code, 0, `node-a: ${a.text.join('\n')}`);
    assert.equal(eb.code, 0, `node-b: ${b.text.join('\n')}`);

    const runs = [
      { name: 'node-a', run: a },
      { name: 'node-b', run: b },
    ];
    const [first, second] = runs.sort((x, y) => timeOf(x.run.lines.find((l) => leaseLine(l, /one bootstrapping/))) - timeOf(y.run.lines.find((l) => leaseLine(l, /one bootstrapping/))));
    // The first holder did everything; the second waited for it, read again and wrote nothing.
    assert.ok(changeCount(first!.run) > 0, `${first!.name} changed nothing`);
    assert.equal(changeCount(second!.run), 0, `${second!.name} changed something after waiting: ${JSON.stringify(outcomes(second!.run))}`);
    const waited = second!.run.lines.find((l) => leaseLine(l, /is held by/));
    assert.ok(waited, `${second!.name} never waited for the lease`);
    assert.match(String(waited.msg), new RegExp(`held by ${first!.name} \\(pid ${first!.run.pid}\\)`));

    // Holding intervals (from the runs' own logs) do not overlap: taken → released of the first
    // ends before the second takes it.
    const firstReleased = timeOf(first!.run.lines.find((l) => leaseLine(l, /released/)));
    const secondTook = timeOf(second!.run.lines.find((l) => leaseLine(l, /one bootstrapping/)));
    assert.ok(firstReleased <= secondTook, `${second!.name} took the lease at ${secondTook}, before ${first!.name} released it at ${firstReleased}`);
    // And so says the apiserver: the holder went first → (free) → second, never back.
    const sequence = holders.map((h) => h.holder.split('/')[0]).filter((h) => h !== '');
    assert.deepEqual([...new Set(sequence)], [first!.name, second!.name], `holders seen: ${JSON.stringify(holders)}`);

    const state = await endState(site);
    await referenceReady;
    assert.deepEqual(state, reference);
  });

  it('a run with nothing to do takes no lease: zero writes to the apiserver', async () => {
    const before = await readLease(site);
    const mark = await auditMark(site.cp);
    const run = await runToEnd(site, { stateDir: join(site.dir, 'node-a') });
    const counts = await countRequests(site.cp, { since: mark });
    assert.equal(changeCount(run), 0);
    assert.equal(counts.writes, 0, `writes: ${JSON.stringify(counts.byResource)}`);
    assert.ok(!run.lines.some((l) => typeof l.lease === 'string'), 'the run logged about the lease');
    assert.equal((await readLease(site))?.metadata.resourceVersion, before?.metadata.resourceVersion);
  });

  it('a holder killed with SIGKILL loses the lease after its duration; the waiting node then converges', async () => {
    const seconds = 4;
    // Something to write, so the run takes the lease.
    await kubeJson(site.cp.rig, 'DELETE', '/api/v1/namespaces/argocd/secrets/sops-age-key');
    const a = startCli(site, { stateDir: join(site.dir, 'node-a'), env: { HOMELAB_BOOTSTRAP_NODE_NAME: 'node-a', HOMELAB_BOOTSTRAP_LEASE_SECONDS: String(seconds) } });
    await a.waitLine((l) => leaseLine(l, /one bootstrapping/), 'node-a took the lease');
    await a.kill();
    const killedAt = Date.now();
    const lease = await readLease(site);
    assert.match(lease?.spec?.holderIdentity ?? '', new RegExp(`^node-a/${a.pid}/`));
    // Whatever node-a managed before it died, node-b has something to do.
    await kubeJson(site.cp.rig, 'DELETE', '/api/v1/namespaces/argocd/secrets/sops-age-key', { allow: [404] });

    const b = await runToEnd(site, { stateDir: join(site.dir, 'node-b'), env: { HOMELAB_BOOTSTRAP_NODE_NAME: 'node-b', HOMELAB_BOOTSTRAP_LEASE_SECONDS: String(seconds) } });
    const waited = b.lines.find((l) => leaseLine(l, /is held by node-a/));
    const took = b.lines.find((l) => leaseLine(l, /taken over/));
    assert.ok(waited && took, `node-b: ${b.lines.filter((l) => l.lease).map((l) => l.msg).join('\n')}`);
    assert.match(String(took.msg), new RegExp(`node-a \\(pid ${a.pid}\\) has not renewed it for ${seconds} s`));
    // node-b watched it unchanged for a full duration (its own clock), and no longer than needed.
    const waitMs = timeOf(took) - timeOf(waited);
    assert.ok(waitMs >= seconds * 1000 - 100, `took over after ${waitMs} ms of waiting`);
    assert.ok(waitMs <= seconds * 1000 + 2500, `took over only after ${waitMs} ms of waiting`);
    assert.ok(timeOf(took) - killedAt >= seconds * 1000 * (2 / 3) - 100, 'taken over before the lease could have expired');
    assert.equal(outcomes(b)['age-key'], 'changed');
    assert.equal((await readLease(site))?.spec?.holderIdentity ?? '', '');
    assert.deepEqual(await endState(site), reference);
  });

  it('a run that waits past its bound exits 75 and names the node holding the lease', async () => {
    await kubeJson(site.cp.rig, 'DELETE', '/api/v1/namespaces/argocd/secrets/sops-age-key');
    const other = 'node-x/4242/' + 'b'.repeat(36);
    await putForeignLease(site, other, 60);
    // node-x is alive: it keeps renewing.
    let renewing = true;
    const renewer = (async () => {
      while (renewing) {
        await sleep(500);
        if (renewing) await putForeignLease(site, other, 60).catch(() => undefined);
      }
    })();
    try {
      const run = await runToEnd(site, { stateDir: join(site.dir, 'node-b'), env: { HOMELAB_BOOTSTRAP_LEASE_WAIT_SECONDS: '2' }, expect: 75 });
      assert.match(run.stderr.join('\n'), /held by node-x \(pid 4242\).*gave up waiting after 2 s/);
      assert.equal(outcomes(run)['age-key'], 'failed');
      assert.equal(outcomes(run)['preflight'], 'unchanged');
      assert.ok(run.ms < 15_000, `took ${run.ms} ms`);
    } finally {
      renewing = false;
      await renewer;
    }
    await deleteLease(site);
    await runToEnd(site, { stateDir: join(site.dir, 'node-b') });
    assert.deepEqual(await endState(site), { ...reference });
  });
});

describe('the lease itself (in-process, real apiserver)', () => {
  const me = (node: string, pid = process.pid) => ({ node, pid, boot: bootId() });
  const make = (node: string, o: { duration?: number; wait?: number; pid?: number; store?: KubeLeaseStore } = {}) => {
    const c = capture();
    const lease = new BootstrapLease(o.store ?? new KubeLeaseStore(site.cp.kubeconfigPath), {
      durationSeconds: o.duration ?? 60,
      waitSeconds: o.wait ?? 60,
      node,
      holder: me(node, o.pid),
      log: c.log,
      pollMs: 100,
    });
    return { lease, lines: c.lines };
  };

  it('one holder at a time: the second waits until the first releases, and a holder renews while it works', async () => {
    await deleteLease(site);
    const a = make('node-a', { duration: 2 });
    const b = make('node-b', { duration: 2 });
    await a.lease.acquire();
    let bHeld = false;
    const bDone = b.lease.acquire().then(() => (bHeld = true));
    // Longer than the duration: node-a renews, so node-b keeps waiting.
    await sleep(3500);
    assert.equal(bHeld, false);
    const held = await readLease(site);
    assert.equal(held?.spec?.holderIdentity, a.lease.identity);
    assert.ok(a.lease.writes >= 3, `node-a wrote the lease ${a.lease.writes} times (take + renewals)`);
    await a.lease.release();
    await bDone;
    assert.equal((await readLease(site))?.spec?.holderIdentity, b.lease.identity);
    assert.equal((await readLease(site))?.spec?.leaseTransitions, 1);
    await b.lease.release();
    assert.equal((await readLease(site))?.spec?.holderIdentity, undefined);
  });

  it('two nodes racing for a lease that does not exist yet: exactly one gets it', async (t) => {
    let collisions = 0;
    for (let round = 0; round < 5; round++) {
      await deleteLease(site);
      const a = make('node-a');
      const b = make('node-b');
      const pa = a.lease.acquire().then(() => 'a');
      const pb = b.lease.acquire().then(() => 'b');
      pa.catch(() => {});
      pb.catch(() => {});
      const winner = await Promise.race([pa, pb]);
      // The loser keeps waiting (it polls every 100 ms), however long we look.
      await sleep(600);
      assert.equal([a.lease.held, b.lease.held].filter(Boolean).length, 1, `both got it (first: ${winner})`);
      const holder = (await readLease(site))?.spec?.holderIdentity;
      assert.equal(holder, a.lease.held ? a.lease.identity : b.lease.identity);
      // Both saw no lease and both POSTed: the apiserver's AlreadyExists decided.
      if ([...a.lines, ...b.lines].some((l) => /created by another node meanwhile/.test(l))) collisions++;
      await a.lease.release();
      await b.lease.release();
    }
    t.diagnostic(`${collisions} of 5 rounds had both nodes create the lease at once`);
  });

  it('a holder on this host whose process is gone is replaced at once, without waiting out the duration', async () => {
    await deleteLease(site);
    await putForeignLease(site, holderIdentity({ node: hostname(), pid: 2 ** 22 + 17, boot: bootId() }), 60);
    const b = make(hostname(), { wait: 5 });
    const t = performance.now();
    await b.lease.acquire();
    assert.ok(performance.now() - t < 1500);
    assert.ok(b.lines.some((l) => /process ended/.test(l)));
    await b.lease.release();
  });

  it('another node that stops renewing loses the lease after its duration, judged on this node’s clock', async () => {
    await putForeignLease(site, 'node-gone/77/' + 'c'.repeat(36), 2);
    const b = make('node-b', { wait: 10 });
    const t = performance.now();
    await b.lease.acquire();
    const ms = performance.now() - t;
    assert.ok(ms >= 1900 && ms < 3500, `took over after ${ms} ms`);
    await b.lease.release();
  });

  it('the wait is bounded: LeaseHeldError names the holder, and later callers get it at once', async () => {
    const a = make('node-a');
    await deleteLease(site);
    await a.lease.acquire();
    const b = make('node-b', { wait: 1 });
    await assert.rejects(b.lease.acquire(), (e: Error) => e instanceof LeaseHeldError && /held by node-a \(pid \d+\).*gave up waiting after 1 s/.test(e.message));
    const t = performance.now();
    await assert.rejects(b.lease.acquire(), LeaseHeldError);
    assert.ok(performance.now() - t < 50);
    await a.lease.release();
  });

  it('without an answering apiserver no lease can be taken: acquire says so and the run writes unguarded', async () => {
    const { writeFileSync, readFileSync } = await import('node:fs');
    const dir = site.dir;
    // Nothing listens on port 1; a kubeconfig with a token the apiserver does not know.
    const dead = join(dir, 'dead.yaml');
    writeFileSync(dead, readFileSync(site.cp.kubeconfigPath, 'utf8').replace(site.cp.server, 'https://127.0.0.1:1'));
    const wrong = join(dir, 'wrong.yaml');
    const badToken = 'not-the-token-0123456789abcdef';
    writeFileSync(wrong, readFileSync(site.cp.kubeconfigPath, 'utf8').replace(site.cp.token, badToken));
    const x = make('node-x', { store: new KubeLeaseStore(dead) });
    assert.equal(await x.lease.acquire(), undefined);
    assert.ok(x.lines.some((l) => /cannot reach the API server at https:\/\/127\.0\.0\.1:1 \(ECONNREFUSED\).*writing without it/.test(l)), x.lines.join(''));
    const y = make('node-y', { store: new KubeLeaseStore(wrong) });
    assert.equal(await y.lease.acquire(), undefined);
    assert.ok(y.lines.some((l) => /HTTP 401: the API server refused the credentials/.test(l)), y.lines.join(''));
    assert.ok(!y.lines.join('').includes(badToken));
    await x.lease.release();
    await y.lease.release();
  });

  it('a lease that is free again after release is taken without waiting', async () => {
    const a = make('node-a');
    await a.lease.acquire();
    await a.lease.release();
    const res = await kubeRequest(site.cp.rig, 'GET', LEASE_PATH);
    assert.equal((JSON.parse(res.body) as LeaseObject).spec?.holderIdentity, undefined);
    const b = make('node-b');
    const t = performance.now();
    await b.lease.acquire();
    assert.ok(performance.now() - t < 1000);
    await b.lease.release();
  });
});

describe('the engine’s beforeWrite hook (fake steps)', () => {
  const settings = parseSettings({
    domain: 'example.org',
    network: { lbPool: { start: '10.0.0.10', stop: '10.0.0.20' }, ingressIP: '10.0.0.10' },
    gitops: { repoURL: 'https://git.example.org/r.git' },
  });
  const quiet = pino({ level: 'silent' });

  /** A step whose world is `world.done`; counts its reads and writes. */
  function fake(name: StepName, world: { done: boolean }, counts: { have: number; change: number }): Step {
    return {
      name,
      needs: [],
      want: () => ({}),
      async have() {
        counts.have++;
        return world.done;
      },
      changes: (_w, done) => [{ action: done ? 'noop' : 'create', target: 'thing' }],
      async change() {
        counts.change++;
        world.done = true;
      },
      rendered: () => ({}),
    } as Step<unknown, boolean>;
  }

  const run = (steps: Step[], extra: Partial<RunOptions>) =>
    runSteps(steps, {
      mode: 'apply',
      settings,
      log: quiet,
      retry: { attempts: 3, baseMs: 1, maxMs: 2 },
      context: (_s, upstream, signal) => ({ settings, log: quiet, signal, upstream, credentials: undefined as never, adapters: undefined as never, progress: () => {} }),
      ...extra,
    });

  it('is not called when nothing is to be done, nor in plan mode', async () => {
    let calls = 0;
    const beforeWrite = async () => (calls++, performance.now());
    await run([fake('dns', { done: true }, { have: 0, change: 0 })], { beforeWrite });
    await run([fake('dns', { done: false }, { have: 0, change: 0 })], { beforeWrite, mode: 'plan' });
    assert.equal(calls, 0);
  });

  it('reads again when the run became the only writer after its read, and writes only what is left', async () => {
    const world = { done: false };
    const counts = { have: 0, change: 0 };
    // Another node finishes the work while this one waits for the lease.
    const beforeWrite = async () => {
      world.done = true;
      return performance.now();
    };
    const [r] = await run([fake('dns', world, counts)], { beforeWrite });
    assert.deepEqual(counts, { have: 2, change: 0 });
    assert.equal(r!.outcome, 'unchanged');
  });

  it('does not read again when the run was the only writer before its read, or when exclusivity is unknown', async () => {
    const held = performance.now();
    const a = { have: 0, change: 0 };
    await run([fake('dns', { done: false }, a)], { beforeWrite: async () => held });
    assert.deepEqual(a, { have: 1, change: 1 });
    const b = { have: 0, change: 0 };
    await run([fake('dns', { done: false }, b)], { beforeWrite: async () => undefined });
    assert.deepEqual(b, { have: 1, change: 1 });
  });

  it('a failing hook fails the attempt: retried when transient, at once otherwise, and nothing is written', async () => {
    let n = 0;
    const counts = { have: 0, change: 0 };
    const [r] = await run([fake('dns', { done: false }, counts)], {
      beforeWrite: async () => {
        if (++n < 2) throw new TransientError('apiserver restarting');
        return performance.now();
      },
    });
    assert.equal(r!.outcome, 'changed');
    assert.equal(r!.attempts, 2);
    const c2 = { have: 0, change: 0 };
    const [r2] = await run([fake('dns', { done: false }, c2)], {
      beforeWrite: async () => {
        throw new LeaseHeldError('held by node-x');
      },
    });
    assert.equal(r2!.outcome, 'failed');
    assert.equal(r2!.attempts, 1);
    assert.equal(c2.change, 0);
  });
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { runSteps, backoffMs, checkGraph, type RunOptions } from '../../src/engine/run.ts';
import { TransientError } from '../../src/engine/errors.ts';
import { parseSettings } from '../../src/settings/load.ts';
import type { Change, Step, StepContext, StepName } from '../../src/steps/types.ts';

const settings = parseSettings({
  domain: 'example.org',
  network: { lbPool: { start: '10.0.0.10', stop: '10.0.0.20' }, ingressIP: '10.0.0.10' },
  gitops: { repoURL: 'https://git.example.org/r.git' },
});
const log = pino({ level: 'silent' });

interface Fake {
  name: StepName;
  needs?: StepName[];
  behave?: (attempt: number, signal: AbortSignal) => Promise<void> | void;
  pending?: Change[];
  timeoutMs?: number;
  out?: Record<string, unknown>;
}

function fakeSteps(defs: Fake[], events: string[]): Step[] {
  return defs.map((d) => {
    let attempt = 0;
    let applied = false;
    return {
      name: d.name,
      needs: d.needs ?? [],
      ...(d.timeoutMs ? { timeoutMs: d.timeoutMs } : {}),
      want: (_s, up) => up,
      async have(ctx: StepContext) {
        attempt++;
        events.push(`have ${d.name}`);
        await d.behave?.(attempt, ctx.signal);
        return applied;
      },
      changes: (_w, done) => (done ? [] : (d.pending ?? [])),
      async change(ctx: StepContext) {
        events.push(`change ${d.name} upstream=${JSON.stringify(ctx.upstream)}`);
        applied = true;
        return d.out;
      },
      outputs: () => d.out ?? {},
      rendered: () => ({}),
    } satisfies Step<unknown, boolean>;
  });
}

function options(mode: RunOptions['mode'] = 'apply', extra: Partial<RunOptions> = {}): RunOptions {
  return {
    mode,
    settings,
    log,
    retry: { attempts: 3, baseMs: 1, maxMs: 2 },
    context: (step, upstream, signal) => ({ settings, log, signal, upstream, credentials: undefined as never, adapters: undefined as never, progress: () => {} }),
    ...extra,
  };
}

const create: Change[] = [{ action: 'create', target: 'thing' }];

test('steps run after what they need, and outputs flow to dependents', async () => {
  const events: string[] = [];
  const steps = fakeSteps(
    [
      { name: 'dns', needs: ['tunnel'], pending: create },
      { name: 'tunnel', pending: create, out: { tunnelId: 't-1' } },
    ],
    events,
  );
  const reports = await runSteps(steps, options());
  assert.deepEqual(reports.map((r) => [r.step, r.outcome]), [['tunnel', 'changed'], ['dns', 'changed']]);
  assert.ok(events.indexOf('change tunnel upstream={}') < events.indexOf('have dns'));
  assert.ok(events.includes('change dns upstream={"tunnelId":"t-1"}'));
});

test('a failed step blocks its dependents but not independent branches', async () => {
  const events: string[] = [];
  const steps = fakeSteps(
    [
      { name: 'preflight' },
      { name: 'cilium', needs: ['preflight'], behave: () => { throw new Error('chart not found'); } },
      { name: 'cilium-crds', needs: ['cilium'] },
      { name: 'tunnel', pending: create },
      { name: 'dns', needs: ['tunnel'], pending: create },
    ],
    events,
  );
  const reports = await runSteps(steps, options());
  const by = Object.fromEntries(reports.map((r) => [r.step, r]));
  assert.equal(by.cilium!.outcome, 'failed');
  assert.equal(by.cilium!.error, 'chart not found');
  assert.equal(by['cilium-crds']!.outcome, 'blocked');
  assert.match(by['cilium-crds']!.error!, /cilium did not succeed/);
  assert.equal(by.dns!.outcome, 'changed');
  assert.equal(by.cilium!.attempts, 1, 'a permanent error is not retried');
});

test('transient errors are retried with backoff, then succeed', async () => {
  const sleeps: number[] = [];
  const steps = fakeSteps([{ name: 'preflight', behave: (n) => { if (n < 3) throw new TransientError('apiserver starting'); }, pending: create }], []);
  const [r] = await runSteps(steps, options('apply', { sleep: async (ms) => { sleeps.push(ms); } }));
  assert.equal(r!.outcome, 'changed');
  assert.equal(r!.attempts, 3);
  assert.equal(sleeps.length, 2);
});

test('retries stop at the attempt limit with the last error', async () => {
  const steps = fakeSteps([{ name: 'preflight', behave: () => { throw Object.assign(new Error('503 from server'), { statusCode: 503 }); } }], []);
  const [r] = await runSteps(steps, options('apply', { sleep: async () => {} }));
  assert.equal(r!.outcome, 'failed');
  assert.equal(r!.attempts, 3);
  assert.equal(r!.error, '503 from server');
});

test('Retry-After from the server is honoured over a shorter backoff', async () => {
  const sleeps: number[] = [];
  const steps = fakeSteps([{ name: 'dns', behave: (n) => { if (n === 1) throw new TransientError('429', { retryAfterMs: 5000 }); } }], []);
  await runSteps(steps, options('apply', { sleep: async (ms) => { sleeps.push(ms); } }));
  assert.deepEqual(sleeps, [5000]);
});

test('a step that hangs is ended by its timeout and the error says so', async () => {
  const steps = fakeSteps(
    [
      { name: 'cilium-crds', timeoutMs: 100, behave: (_n, signal) => new Promise((_r, reject) => signal.addEventListener('abort', () => reject(signal.reason))) },
      { name: 'tunnel', pending: create },
    ],
    [],
  );
  const t0 = Date.now();
  const reports = await runSteps(steps, options());
  assert.ok(Date.now() - t0 < 2000);
  assert.equal(reports[0]!.outcome, 'failed');
  assert.match(reports[0]!.error!, /cilium-crds: timed out after/);
  assert.equal(reports[1]!.outcome, 'changed');
});

test('plan observes and changes nothing', async () => {
  const events: string[] = [];
  const reports = await runSteps(fakeSteps([{ name: 'preflight', pending: create }], events), options('plan'));
  assert.equal(reports[0]!.outcome, 'planned');
  assert.deepEqual(reports[0]!.changes, create);
  assert.ok(!events.some((e) => e.startsWith('change')));
});

test('--only runs the named steps and only observes what they need', async () => {
  const events: string[] = [];
  const steps = fakeSteps(
    [
      { name: 'preflight', pending: create },
      { name: 'tunnel', needs: ['preflight'], pending: create, out: { tunnelId: 't' } },
      { name: 'dns', needs: ['tunnel'], pending: create },
      { name: 'cilium', needs: ['preflight'], pending: create },
    ],
    events,
  );
  const reports = await runSteps(steps, options('apply', { only: ['dns'] }));
  assert.deepEqual(reports.map((r) => [r.step, r.outcome]), [['preflight', 'observed'], ['tunnel', 'observed'], ['dns', 'changed']]);
  assert.deepEqual(events.filter((e) => e.startsWith('change')), ['change dns upstream={"tunnelId":"t"}']);
});

test('a second apply after convergence changes nothing', async () => {
  const steps = fakeSteps([{ name: 'preflight', pending: create }], []);
  await runSteps(steps, options());
  const [r] = await runSteps(steps, options());
  assert.equal(r!.outcome, 'unchanged');
});

test('cycles and unknown needs are rejected', () => {
  assert.throws(() => checkGraph(fakeSteps([{ name: 'dns', needs: ['tunnel'] }, { name: 'tunnel', needs: ['dns'] }], [])), /cycle/);
  assert.throws(() => checkGraph(fakeSteps([{ name: 'dns', needs: ['tunnel'] }], [])), /unknown step tunnel/);
});

test('backoff grows exponentially with jitter and a cap', () => {
  const p = { attempts: 10, baseMs: 100, maxMs: 1000 };
  assert.equal(backoffMs(1, p, () => 0), 50);
  assert.equal(backoffMs(1, p, () => 1), 100);
  assert.equal(backoffMs(3, p, () => 1), 400);
  assert.equal(backoffMs(9, p, () => 1), 1000);
});

test('a step that fails after publishing its outputs still lets its dependents run', async () => {
  const { PartialStepError } = await import('../../src/engine/errors.ts');
  const events: string[] = [];
  const steps = fakeSteps(
    [
      { name: 'tunnel', behave: () => { throw new PartialStepError('secret not written: cluster down', { tunnelId: 't-9' }, new Error('ECONNREFUSED')); } },
      { name: 'dns', needs: ['tunnel'], pending: create },
    ],
    events,
  );
  const reports = await runSteps(steps, options());
  assert.equal(reports[0]!.outcome, 'failed');
  assert.equal(reports[1]!.outcome, 'changed');
  assert.ok(events.includes('change dns upstream={"tunnelId":"t-9"}'));
});

test('a standing conflict is reported, not failed, and takes no Lease when it is all there is to do', async () => {
  const { ConflictError } = await import('../../src/engine/errors.ts');
  const conflictStep = (changes: Change[]): Step =>
    ({
      name: 'dns',
      needs: [],
      want: () => ({}),
      have: async () => ({}),
      changes: () => changes,
      async change() {
        throw new ConflictError('1 DNS record not written because of a conflict');
      },
      rendered: () => ({}),
    }) satisfies Step;
  const conflict: Change = { action: 'conflict', target: 'DNS A sonarr.example.org (zone example.org)', detail: 'someone else' };
  const leases: string[] = [];
  const beforeWrite = async (s: Step) => {
    leases.push(s.name);
    return undefined;
  };
  const [alone] = await runSteps([conflictStep([conflict])], options('apply', { beforeWrite }));
  assert.equal(alone!.outcome, 'conflict');
  assert.equal(alone!.attempts, 1, 'not retried');
  assert.match(alone!.error!, /because of a conflict/);
  assert.deepEqual(leases, [], 'no Lease for a run that only reports a conflict');
  const [mixed] = await runSteps([conflictStep([conflict, { action: 'create', target: 'DNS A radarr.example.org (zone example.org)' }])], options('apply', { beforeWrite }));
  assert.equal(mixed!.outcome, 'conflict');
  assert.deepEqual(leases, ['dns'], 'a write beside the conflict takes the Lease');
});

test('a PartialStepError that is retried hands its outputs on at once: dependents do not wait for the retries', async () => {
  const { PartialStepError, TransientError } = await import('../../src/engine/errors.ts');
  const events: string[] = [];
  let dnsDone = false;
  const steps = fakeSteps(
    [
      {
        name: 'tunnel',
        behave: async (attempt) => {
          // Retried while the cluster is away; dns must have finished before the last attempt.
          if (attempt === 3) events.push(`tunnel attempt 3 dns done=${dnsDone}`);
          throw new PartialStepError('secret not written', { tunnelId: 't-7' }, new TransientError('ECONNREFUSED'));
        },
      },
      { name: 'dns', needs: ['tunnel'], pending: create, out: {} },
    ],
    events,
  );
  const reports = await runSteps(steps, options('apply', { retry: { attempts: 3, baseMs: 200, maxMs: 200 }, onReport: (r) => void (r.step === 'dns' && (dnsDone = true)) }));
  assert.equal(reports[0]!.outcome, 'failed');
  assert.equal(reports[0]!.attempts, 3);
  assert.equal(reports[1]!.outcome, 'changed');
  assert.ok(events.includes('change dns upstream={"tunnelId":"t-7"}'));
  assert.ok(events.includes('tunnel attempt 3 dns done=true'), events.join(' | '));
});

test('an error text that quotes a secret is scrubbed in the report (summary, plan, state file all read it)', async () => {
  const { Secret } = await import('../../src/secret.ts');
  const token = 'tok-3f9a1c77e0b24d5e\nsecond-line-9b8c7d6e';
  new Secret(token);
  const steps = fakeSteps([{ name: 'tunnel', behave: () => { throw new TypeError(`Headers.append: "Bearer ${token}" is an invalid header value.`); } }], []);
  const [r] = await runSteps(steps, options());
  assert.equal(r!.outcome, 'failed');
  assert.equal(r!.error, 'Headers.append: "Bearer [REDACTED]" is an invalid header value.');
});

// Runs steps as a dependency graph: a step starts when everything it needs succeeded, so
// independent branches (cluster vs. Cloudflare) keep going when one of them fails.
import type { Logger } from 'pino';
import { isWrite, type Change, type Outputs, type Step, type StepContext, type StepName } from '../steps/types.ts';
import { ConflictError, isTransient, PartialStepError, retryAfterMs } from './errors.ts';
import type { Settings } from '../settings/schema.ts';
import { errorMessage } from '../secret.ts';

export type Mode = 'plan' | 'apply';
/** 'conflict': converged except for changes that records of someone else stand in the way of (reported, not failed). */
export type Outcome = 'unchanged' | 'changed' | 'planned' | 'failed' | 'blocked' | 'skipped' | 'observed' | 'conflict';

export interface StepReport {
  step: StepName;
  outcome: Outcome;
  changes: Change[];
  error?: string;
  /** The step's notes() from its last read. */
  notes?: string[];
  startedAt: string;
  durationMs: number;
  attempts: number;
}

export interface RetryPolicy {
  attempts: number;
  baseMs: number;
  maxMs: number;
}

export interface RunOptions {
  mode: Mode;
  settings: Settings;
  /** Run only these steps; what they need is observed (read, never written) for its outputs. */
  only?: readonly StepName[];
  retry?: Partial<RetryPolicy>;
  /** Default bound for a step, all attempts included. */
  timeoutMs?: number;
  log: Logger;
  /** Builds the context of one step (adapters, credentials, logger child...). */
  context(step: Step, upstream: Outputs, signal: AbortSignal): StepContext;
  onReport?(report: StepReport): void;
  /**
   * Called in apply mode before a step that has something to do (a change other than noop)
   * runs change(), e.g. to take the cluster-wide lease. Resolves to the time (performance.now())
   * since which this run has been the only writer, or undefined when that is unknown: a step
   * whose state was read before that time reads it again (another node may have done the work
   * while this one waited) and writes only what is still to do. Throwing fails the attempt like
   * any error of the step (retried when transient).
   */
  beforeWrite?(step: Step, signal: AbortSignal): Promise<number | undefined>;
  /** Test seam for backoff sleeps. */
  sleep?(ms: number, signal: AbortSignal): Promise<void>;
}

const DEFAULT_RETRY: RetryPolicy = { attempts: 6, baseMs: 1000, maxMs: 30_000 };
const DEFAULT_TIMEOUT_MS = 10 * 60_000;

export class StepTimeoutError extends Error {
  override name = 'StepTimeoutError';
}

export function backoffMs(attempt: number, p: RetryPolicy, random = Math.random): number {
  // Full jitter: spreads the retries of several nodes booting together.
  const cap = Math.min(p.maxMs, p.baseMs * 2 ** (attempt - 1));
  return Math.round(cap / 2 + (random() * cap) / 2);
}

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Steps in `only` plus everything they need, transitively. */
export function closure(steps: readonly Step[], only: readonly StepName[]): Set<StepName> {
  const byName = new Map(steps.map((s) => [s.name, s]));
  const out = new Set<StepName>();
  const visit = (n: StepName) => {
    if (out.has(n)) return;
    out.add(n);
    for (const d of byName.get(n)?.needs ?? []) visit(d);
  };
  only.forEach(visit);
  return out;
}

export function checkGraph(steps: readonly Step[]): void {
  const names = new Set(steps.map((s) => s.name));
  for (const s of steps) for (const d of s.needs) if (!names.has(d)) throw new Error(`step ${s.name} needs unknown step ${d}`);
  const state = new Map<StepName, 'visiting' | 'done'>();
  const byName = new Map(steps.map((s) => [s.name, s]));
  const visit = (n: StepName, path: StepName[]) => {
    if (state.get(n) === 'done') return;
    if (state.get(n) === 'visiting') throw new Error(`steps form a cycle: ${[...path, n].join(' -> ')}`);
    state.set(n, 'visiting');
    for (const d of byName.get(n)!.needs) visit(d, [...path, n]);
    state.set(n, 'done');
  };
  for (const s of steps) visit(s.name, []);
}

// Every error text the engine hands on (reports: summary, plan, state file, status) is scrubbed here.
const message = errorMessage;

export async function runSteps(steps: readonly Step[], opts: RunOptions): Promise<StepReport[]> {
  checkGraph(steps);
  const retry = { ...DEFAULT_RETRY, ...opts.retry };
  const sleep = opts.sleep ?? abortableSleep;
  const selected = opts.only && opts.only.length > 0 ? new Set(opts.only) : undefined;
  const included = selected ? closure(steps, [...selected]) : new Set(steps.map((s) => s.name));
  const outputs = new Map<StepName, Outputs>();
  const reports = new Map<StepName, StepReport>();
  const running = new Map<StepName, Promise<StepReport>>();
  // What dependents wait for: the step's report, or sooner, the outputs of a PartialStepError (the
  // Cloudflare part of the tunnel step is done while its Secret write is still being retried).
  const ready = new Map<StepName, { promise: Promise<StepReport>; resolve(r: StepReport): void }>();
  for (const s of steps) {
    let resolve!: (r: StepReport) => void;
    const promise = new Promise<StepReport>((r) => (resolve = r));
    ready.set(s.name, { promise, resolve });
  }

  const runOne = async (step: Step): Promise<StepReport> => {
    const deps = await Promise.all(step.needs.filter((d) => included.has(d)).map((d) => ready.get(d)!.promise));
    const started = Date.now();
    const report = (r: Omit<StepReport, 'step' | 'startedAt' | 'durationMs'>): StepReport => {
      const full = { step: step.name, startedAt: new Date(started).toISOString(), durationMs: Date.now() - started, ...r };
      reports.set(step.name, full);
      opts.onReport?.(full);
      ready.get(step.name)!.resolve(full);
      return full;
    };
    const log = opts.log.child({ step: step.name });
    // A step that failed after publishing its outputs does not hold back what needs them.
    const failedDeps = deps.filter((d) => (d.outcome === 'failed' && !outputs.has(d.step)) || d.outcome === 'blocked');
    if (failedDeps.length > 0) {
      const why = `not run: ${failedDeps.map((d) => d.step).join(', ')} did not succeed`;
      log.warn({ outcome: 'blocked' }, `${step.name}: ${why}`);
      return report({ outcome: 'blocked', changes: [], error: why, attempts: 0 });
    }
    if (step.enabled && !step.enabled(opts.settings)) {
      log.info({ outcome: 'skipped' }, `${step.name}: skipped (not configured)`);
      return report({ outcome: 'skipped', changes: [], attempts: 0 });
    }
    const upstream: Outputs = Object.assign({}, ...step.needs.map((d) => outputs.get(d) ?? {}));
    const observeOnly = opts.mode === 'plan' || (selected !== undefined && !selected.has(step.name));
    const timeoutMs = step.timeoutMs ?? opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(new StepTimeoutError(`${step.name}: timed out after ${Math.round(timeoutMs / 1000)} s`)), timeoutMs);
    log.info({ event: 'start', mode: observeOnly ? 'observe' : 'apply' }, `${step.name}: start`);
    let attempt = 0;
    try {
      for (;;) {
        attempt++;
        try {
          const ctx = opts.context(step, upstream, deadline.signal);
          const want = step.want(ctx.settings, upstream);
          const readAt = performance.now();
          let have = await step.have(ctx, want);
          let changes = step.changes(want, have);
          let actionable = changes.some((c) => c.action !== 'noop');
          // A standing conflict is only reported: it needs no Lease, so a run with nothing else to do writes nothing.
          if (!observeOnly && changes.some((c) => c.action !== 'noop' && c.action !== 'conflict') && opts.beforeWrite) {
            const exclusiveSince = await opts.beforeWrite(step, deadline.signal);
            if (exclusiveSince !== undefined && exclusiveSince > readAt) {
              have = await step.have(ctx, want);
              changes = step.changes(want, have);
              actionable = changes.some((c) => c.action !== 'noop');
            }
          }
          let out: Outputs = step.outputs?.(want, have) ?? {};
          let conflict: string | undefined;
          if (!observeOnly && actionable) {
            try {
              out = { ...out, ...((await step.change(ctx, changes, want, have)) ?? {}) };
            } catch (err) {
              if (!(err instanceof ConflictError)) throw err;
              conflict = err.message;
            }
          }
          outputs.set(step.name, out);
          const n = changes.filter(isWrite).length;
          const outcome: Outcome = observeOnly ? (opts.mode === 'plan' ? 'planned' : 'observed') : conflict !== undefined ? 'conflict' : n > 0 ? 'changed' : 'unchanged';
          const notes = step.notes?.(want, have) ?? [];
          const r = report({ outcome, changes, attempts: attempt, ...(conflict !== undefined ? { error: conflict } : {}), ...(notes.length > 0 ? { notes } : {}) });
          log.info(
            { event: 'finish', outcome, changes: n, durationMs: r.durationMs, attempts: attempt, changed: changes.filter(isWrite).map((c) => `${c.action} ${c.target}`) },
            `${step.name}: ${outcome}${n > 0 ? ` (${n} change${n === 1 ? '' : 's'})` : ''} in ${r.durationMs} ms`,
          );
          return r;
        } catch (err) {
          if (deadline.signal.aborted) throw deadline.signal.reason;
          if (!isTransient(err) || attempt >= retry.attempts) throw err;
          if (err instanceof PartialStepError && !outputs.has(step.name)) {
            outputs.set(step.name, err.outputs);
            ready.get(step.name)!.resolve({ step: step.name, outcome: 'failed', changes: [], error: message(err), startedAt: new Date(started).toISOString(), durationMs: Date.now() - started, attempts: attempt });
          }
          const wait = Math.max(retryAfterMs(err) ?? 0, backoffMs(attempt, retry));
          log.warn({ attempt, retryInMs: wait, err: message(err) }, `${step.name}: attempt ${attempt} failed (${message(err)}); retrying in ${wait} ms`);
          await sleep(wait, deadline.signal);
        }
      }
    } catch (err) {
      const e = deadline.signal.aborted && !(err instanceof StepTimeoutError) ? deadline.signal.reason : err;
      if (err instanceof PartialStepError) outputs.set(step.name, err.outputs);
      const r = report({ outcome: 'failed', changes: [], error: message(e), attempts: attempt });
      log.error({ event: 'finish', outcome: 'failed', durationMs: r.durationMs, attempts: attempt, err: message(e) }, `${step.name}: failed: ${message(e)}`);
      return r;
    } finally {
      clearTimeout(timer);
    }
  };

  // Start in declaration order; each step awaits its own needs.
  const ordered = topoOrder(steps).filter((s) => included.has(s.name));
  for (const s of ordered) running.set(s.name, runOne(s));
  await Promise.all(running.values());
  return ordered.map((s) => reports.get(s.name)!);
}

export function topoOrder(steps: readonly Step[]): Step[] {
  const byName = new Map(steps.map((s) => [s.name, s]));
  const out: Step[] = [];
  const seen = new Set<StepName>();
  const visit = (s: Step) => {
    if (seen.has(s.name)) return;
    seen.add(s.name);
    s.needs.forEach((d) => visit(byName.get(d)!));
    out.push(s);
  };
  steps.forEach(visit);
  return out;
}

export const succeeded = (r: StepReport): boolean => !(r.outcome === 'failed' || r.outcome === 'blocked');

// What the Helm suites share: the helm under test set up the way the daemon finds it, a logger
// whose lines the test reads, and one step driven the way the engine drives it.
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { binDir } from './binaries.ts';
import { installHelmShim, type HelmShim } from './helm-shim.ts';
import { createLogger, type Logger } from '../../src/log.ts';
import type { Step, StepContext } from '../../src/steps/types.ts';

/**
 * The daemon finds helm on PATH (the recording shim of the helm under test first) and keeps its
 * files under $STATE_DIRECTORY/helm; both go below `work`.
 */
export function useHelmShim(work: string): HelmShim {
  const shim = installHelmShim(join(work, 'shim'));
  process.env.PATH = `${shim.dir}:${binDir()}:${process.env.PATH ?? ''}`;
  process.env.STATE_DIRECTORY = join(work, 'state');
  delete process.env.HELM_BIN;
  return shim;
}

/** A debug logger; each line it writes (JSON text) is pushed to `lines`. */
export function linesLogger(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const log = createLogger({
    level: 'debug',
    destination: new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(...chunk.toString().split('\n').filter(Boolean));
        cb();
      },
    }),
  });
  return { log, lines };
}

/**
 * One engine pass of one step: plan, then (unless planOnly) change when anything is to be done.
 * `calls` counts the helm runs by subcommand, `spawned` lists the helm processes it started.
 */
export async function runHelmStep<W, H>(shim: HelmShim, step: Step<W, H>, ctx: StepContext, opts: { planOnly?: boolean } = {}) {
  shim.reset();
  const want = step.want(ctx.settings, {});
  const have = await step.have(ctx, want);
  const changes = step.changes(want, have);
  if (!opts.planOnly && changes.some((c) => c.action !== 'noop')) await step.change(ctx, changes, want, have);
  return { changes, calls: ctx.adapters.helm.calls, spawned: shim.calls() };
}

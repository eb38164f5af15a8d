// The root of the graph: settings valid, credentials readable, the age key an age identity,
// and the API server answering /readyz (k3s may still be starting when NixOS runs us); before the
// first bootstrap it also warns about leftovers of the old stack (what `doctor` finds). Writes nothing.
import { stat } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { Settings } from '../settings/schema.ts';
import { parseSettings } from '../settings/load.ts';
import type { CredentialName, Credentials } from '../credentials.ts';
import { parseAgeIdentities } from '../agekey.ts';
import { warnLeftovers } from '../doctor/doctor.ts';
import { READYZ_TIMEOUT_MS } from '../adapters/kube.ts';
import type { Change, Outputs, Step, StepContext } from './types.ts';
import { setTimeout as sleep } from 'node:timers/promises';

export interface PreflightWant {
  ageKeyFile: string;
  kubeconfigFile: string;
}

export interface PreflightHave {
  server: string;
  /** Public keys of the identities in the age key file: what `.sops.yaml` must list. */
  ageRecipients: string[];
  readyzAttempts: number;
}

export interface PreflightOptions {
  /** How long to wait for /readyz in all (k3s start on a slow disk takes a minute or two). */
  readyzWaitMs?: number;
  /**
   * How long a server that accepts connections but never answers is waited for. A starting k3s
   * refuses connections or answers "not ready" at once; silence past this bound is a hung
   * apiserver (or a proxy swallowing requests), and waiting the full readyzWaitMs would only
   * hold back the error.
   */
  unansweredWaitMs?: number;
  /** First pause between /readyz tries; doubles up to readyzMaxDelayMs. */
  readyzDelayMs?: number;
  readyzMaxDelayMs?: number;
}

/** Warns when a credential file is open to group or others (the plan's kubeconfig was world-readable). */
export async function warnIfExposed(credentials: Credentials, name: CredentialName, log: Logger): Promise<void> {
  const path = credentials.path(name);
  let mode: number;
  try {
    mode = (await stat(path)).mode;
  } catch {
    return; // reading it already reported why
  }
  if ((mode & 0o077) !== 0) {
    const octal = (mode & 0o777).toString(8).padStart(4, '0');
    log.warn(
      { credential: name, path, mode: octal },
      `${name} credential ${path} (${credentials.field(name)}) has mode ${octal}: it is readable or writable by group or others; make it 0600 (owner only)`,
    );
  }
}


/** Waits for /readyz with backoff, a log line per try, within `waitMs`. Returns the number of tries. */
export async function waitReadyz(ctx: StepContext, opts: Required<PreflightOptions>): Promise<number> {
  const kube = ctx.adapters.kube;
  const deadline = performance.now() + opts.readyzWaitMs;
  const started = performance.now();
  let delay = opts.readyzDelayMs;
  let last = '';
  let answered = false;
  for (let attempt = 1; ; attempt++) {
    ctx.progress('waiting for the API server /readyz');
    const status = await kube.readyzStatus(ctx.signal);
    if (status.ready) {
      if (attempt > 1) ctx.log.info({ server: kube.server, attempts: attempt }, 'API server is ready');
      return attempt;
    }
    last = status.detail;
    answered ||= !status.unanswered;
    const pause = Math.min(delay, Math.max(0, deadline - performance.now()));
    // Given up before a try that would end past the bound, so the bound holds as said.
    if (!answered && performance.now() - started + pause + READYZ_TIMEOUT_MS > opts.unansweredWaitMs) {
      throw new Error(
        `API server ${kube.server} accepts connections but answered none of ${attempt} /readyz tries in ${Math.round((performance.now() - started) / 1000)} s (kubeconfig ${kube.kubeconfigPath}); is the apiserver hung, or is a proxy or firewall swallowing requests?`,
      );
    }
    const left = deadline - performance.now();
    if (left <= 0) {
      throw new Error(`API server ${kube.server} not ready after ${Math.round(opts.readyzWaitMs / 1000)} s (${attempt} tries; last: ${last}); is k3s running?`);
    }
    ctx.log.info({ server: kube.server, attempt, detail: last, retryInMs: Math.round(pause) }, `waiting for the API server /readyz (k3s starting?): ${last}`);
    await sleep(pause, undefined, { signal: ctx.signal });
    delay = Math.min(delay * 2, opts.readyzMaxDelayMs);
  }
}

export function makePreflightStep(options: PreflightOptions = {}): Step<PreflightWant, PreflightHave> {
  const opts: Required<PreflightOptions> = { readyzWaitMs: 180_000, unansweredWaitMs: 60_000, readyzDelayMs: 500, readyzMaxDelayMs: 5_000, ...options };
  return {
    name: 'preflight',
    needs: [],
    timeoutMs: opts.readyzWaitMs + 30_000,
    want(settings: Settings): PreflightWant {
      // Settings reach us parsed; re-checking keeps a programmatic caller (tests, a future API)
      // under the same rules, cross-field ones included.
      parseSettings(settings);
      return { ageKeyFile: settings.sops.ageKeyFile, kubeconfigFile: settings.kubeconfigFile };
    },
    async have(ctx: StepContext): Promise<PreflightHave> {
      // Local checks first: they fail fast and need no cluster.
      await ctx.credentials.read('kubeconfig');
      await warnIfExposed(ctx.credentials, 'kubeconfig', ctx.log);
      const key = await ctx.credentials.read('age-key');
      const path = ctx.credentials.path('age-key');
      const identities = await parseAgeIdentities(key.reveal(), `${path} (${ctx.credentials.field('age-key')})`);
      await warnIfExposed(ctx.credentials, 'age-key', ctx.log);
      const ageRecipients = identities.map((i) => i.recipient);
      ctx.log.info({ ageRecipients }, `age key holds ${identities.length} identit${identities.length === 1 ? 'y' : 'ies'}`);
      const readyzAttempts = await waitReadyz(ctx, opts);
      await warnLeftovers(ctx.adapters.kube, ctx.log, ctx.signal);
      return { server: ctx.adapters.kube.server, ageRecipients, readyzAttempts };
    },
    changes(): Change[] {
      return [];
    },
    async change(): Promise<void> {},
    outputs(_want: PreflightWant, have: PreflightHave): Outputs {
      return { ageRecipients: have.ageRecipients };
    },
    rendered() {
      return {};
    },
  };
}

export const preflightStep = makePreflightStep();

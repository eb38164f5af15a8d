#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { loadSettings, SettingsError } from './settings/load.ts';
import type { Settings } from './settings/schema.ts';
import { Credentials, CREDENTIAL_NAMES } from './credentials.ts';
import { createAdapters } from './adapters/index.ts';
import { createLogger, type Logger } from './log.ts';
import { scrub } from './secret.ts';
import { runSteps, succeeded, type Mode, type StepReport } from './engine/run.ts';
import { acquireLock, LockHeldError } from './engine/lock.ts';
import { BootstrapLease, KubeLeaseStore, leaseSettingsFromEnv } from './engine/lease.ts';
import { defaultStateDir, readState, recordRun } from './engine/state.ts';
import { notifyStatus } from './engine/notify.ts';
import { formatRendered, render } from './render.ts';
import { formatPlan, formatSummary } from './format.ts';
import { STEPS } from './steps/index.ts';
import { STEP_NAMES, type Step, type StepName } from './steps/types.ts';

/** Exit codes, documented in README. */
export const EXIT = { ok: 0, failed: 1, planChanges: 2, usage: 64, badSettings: 65, locked: 75 } as const;

export const VERSION: string = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const USAGE = `homelab-bootstrap ${VERSION}: brings k3s to "ArgoCD owns everything", idempotently.

Usage:
  homelab-bootstrap render --config FILE [--output yaml|json]   desired state; contacts nothing
  homelab-bootstrap plan --config FILE                          what apply would change (exit 2 if anything)
  homelab-bootstrap apply --config FILE [--only STEP]...        converge (exit 0 when every step converged)
  homelab-bootstrap status [--state-dir DIR]                    last run per step
  homelab-bootstrap validate-config FILE [--check-files]        validate settings (Nix build time)
  homelab-bootstrap --version

Steps: ${STEP_NAMES.join(', ')}
Options: --state-dir DIR (default $STATE_DIRECTORY), --log-level LEVEL
`;

class UsageError extends Error {}

interface Io {
  out(text: string): void;
  err(text: string): void;
}

const stdio: Io = { out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) };

function needConfig(config: string | undefined): string {
  if (!config) throw new UsageError('missing --config FILE');
  return config;
}

async function converge(mode: Mode, settings: Settings, only: StepName[], log: Logger, lease?: BootstrapLease): Promise<StepReport[]> {
  const credentials = new Credentials(settings);
  const adapters = createAdapters(settings, credentials, log);
  return runSteps(STEPS, {
    mode,
    settings,
    only,
    log,
    // Taken before the first write only, so a run with nothing to do writes nothing.
    ...(lease ? { beforeWrite: (_step: Step, signal: AbortSignal) => lease.acquire(signal) } : {}),
    context: (step, upstream, signal) => {
      const stepLog = log.child({ step: step.name });
      return {
        settings,
        log: stepLog,
        signal,
        credentials,
        adapters,
        upstream,
        progress: (text) => notifyStatus(`${step.name}: ${text}`),
      };
    },
    onReport: (r) => notifyStatus(`${r.step}: ${r.outcome}`),
  });
}

export async function main(argv: string[], rawIo: Io = stdio): Promise<number> {
  // Everything printed passes scrub(): a secret quoted by an error reaches neither stdout nor stderr.
  const io: Io = { out: (t) => rawIo.out(scrub(t)), err: (t) => rawIo.err(scrub(t)) };
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        output: { type: 'string', short: 'o' },
        only: { type: 'string', multiple: true },
        'state-dir': { type: 'string' },
        'log-level': { type: 'string' },
        'check-files': { type: 'boolean' },
        version: { type: 'boolean', short: 'V' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (e) {
    io.err(`${(e as Error).message}\n\n${USAGE}`);
    return EXIT.usage;
  }
  const { values: o, positionals } = parsed;
  if (o.version) {
    io.out(`${VERSION}\n`);
    return EXIT.ok;
  }
  const [command, ...rest] = positionals;
  if (o.help || !command) {
    (o.help ? io.out : io.err)(USAGE);
    return o.help ? EXIT.ok : EXIT.usage;
  }
  const stateDir = o['state-dir'] ?? defaultStateDir();
  try {
    switch (command) {
      case 'validate-config': {
        const file = rest[0] ?? o.config;
        if (!file) throw new UsageError('validate-config needs a FILE');
        const settings = loadSettings(file);
        if (o['check-files']) {
          const credentials = new Credentials(settings);
          const missing = CREDENTIAL_NAMES.filter((n) => n !== 'cloudflare-api-token' || settings.cloudflare)
            .map((n) => ({ n, p: credentials.path(n) }))
            .filter(({ p }) => !existsSync(p))
            .map(({ n, p }) => `${credentials.field(n)}: ${p} does not exist (the ${n} credential)`);
          if (missing.length > 0) throw new SettingsError(file, missing);
        }
        io.out(`${file}: valid\n`);
        return EXIT.ok;
      }
      case 'render': {
        const format = o.output ?? 'yaml';
        if (format !== 'yaml' && format !== 'json') throw new UsageError(`--output must be yaml or json, got ${format}`);
        io.out(formatRendered(render(loadSettings(needConfig(o.config))), format));
        return EXIT.ok;
      }
      case 'status': {
        const state = readState(stateDir);
        if (!state.lastRun) {
          io.out(`no run recorded in ${stateDir}\n`);
          return EXIT.ok;
        }
        const r = state.lastRun;
        io.out(`last run: ${r.mode} at ${r.at}, ${r.ok ? 'ok' : 'FAILED'}, ${r.changes} changes, ${(r.durationMs / 1000).toFixed(1)}s\n`);
        for (const [step, s] of Object.entries(state.steps)) {
          io.out(`${step.padEnd(12)} ${s.outcome.padEnd(9)} ${s.at} ${(s.durationMs / 1000).toFixed(1)}s ${s.changes} changes${s.error ? `  ${s.error}` : ''}\n`);
        }
        return r.ok ? EXIT.ok : EXIT.failed;
      }
      case 'plan':
      case 'apply': {
        const settings = loadSettings(needConfig(o.config));
        const only = (o.only ?? []).flatMap((s) => s.split(',')).filter(Boolean);
        const unknown = only.filter((s) => !(STEP_NAMES as readonly string[]).includes(s));
        if (unknown.length > 0) throw new UsageError(`unknown step(s) in --only: ${unknown.join(', ')}; steps are ${STEP_NAMES.join(', ')}`);
        // plan writes to stdout what it would do; its logs go to stderr to keep that clean.
        const log = createLogger({ level: o['log-level'], ...(command === 'plan' ? { destination: process.stderr, pretty: false } : {}) });
        // One node bootstraps at a time (several k3s servers each run the daemon); plan never writes.
        const leaseStore = command === 'apply' ? new KubeLeaseStore(new Credentials(settings).path('kubeconfig')) : undefined;
        const lease = leaseStore ? new BootstrapLease(leaseStore, { ...leaseSettingsFromEnv(), log, onWait: (text) => notifyStatus(text) }) : undefined;
        const release = acquireLock(stateDir);
        const started = Date.now();
        try {
          notifyStatus(`${command}: starting`);
          let reports: StepReport[];
          try {
            reports = await converge(command, settings, only as StepName[], log, lease);
          } finally {
            await lease?.release();
            leaseStore?.close();
          }
          // `status` tells about converging runs; a plan changes nothing worth recording.
          if (command === 'apply') recordRun(stateDir, command, started, reports);
          const ok = reports.every(succeeded);
          notifyStatus(`${command}: ${ok ? 'done' : 'failed'}`);
          if (command === 'plan') {
            io.out(formatPlan(reports));
            if (!ok) return EXIT.failed;
            return reports.some((r) => r.changes.some((c) => c.action !== 'noop')) ? EXIT.planChanges : EXIT.ok;
          }
          io.out(formatSummary(reports));
          // Another node kept the lease past the wait: not a failure of this node, and systemd retries 75.
          if (!ok && lease?.gaveUp) {
            io.err(`${lease.gaveUp.message}\n`);
            return EXIT.locked;
          }
          return ok ? EXIT.ok : EXIT.failed;
        } finally {
          log.flush?.();
          release();
        }
      }
      default:
        throw new UsageError(`unknown command ${command}`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`${e.message}\n\n${USAGE}`);
      return EXIT.usage;
    }
    if (e instanceof SettingsError) {
      io.err(`${e.message}\n`);
      return EXIT.badSettings;
    }
    if (e instanceof LockHeldError) {
      io.err(`${e.message}\n`);
      return EXIT.locked;
    }
    io.err(`error: ${(e as Error).message}\n`);
    return EXIT.failed;
  }
}

// Run only as the program, not when imported by tests.
if (process.argv[1] && realpathSync(process.argv[1]) === import.meta.filename) {
  process.exitCode = await main(process.argv.slice(2));
}

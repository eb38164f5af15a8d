// `plan` and `apply`: settings, the run lock, the bootstrap Lease, the step graph and what the
// run prints. Loaded only by these two commands (src/cli.ts), with everything they pull in.
import { loadSettings } from '../settings/load.ts';
import type { Settings } from '../settings/schema.ts';
import { Credentials } from '../credentials.ts';
import { createAdapters } from '../adapters/index.ts';
import { createLogger, type Logger } from '../log.ts';
import { runSteps, succeeded, type Mode, type StepReport } from '../engine/run.ts';
import { acquireLock } from '../engine/lock.ts';
import { BootstrapLease, KubeLeaseStore, leaseSettingsFromEnv } from '../engine/lease.ts';
import { recordRun } from '../engine/state.ts';
import { notifyStatus } from '../engine/notify.ts';
import { formatPlan, formatSummary } from '../format.ts';
import { STEPS } from '../steps/index.ts';
import type { Step, StepName } from '../steps/types.ts';
import { EXIT } from '../exit.ts';

export interface ConvergeOptions {
  config: string;
  only: StepName[];
  stateDir: string;
  logLevel: string | undefined;
}

interface Io {
  out(text: string): void;
  err(text: string): void;
}

async function runAll(mode: Mode, settings: Settings, only: StepName[], stateDir: string, log: Logger, lease?: BootstrapLease): Promise<StepReport[]> {
  const credentials = new Credentials(settings);
  const adapters = createAdapters(settings, credentials, log, { stateDir });
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

export async function converge(command: Mode, opts: ConvergeOptions, io: Io): Promise<number> {
  const settings = loadSettings(opts.config);
  // plan writes to stdout what it would do; its logs go to stderr to keep that clean.
  const log = createLogger({ level: opts.logLevel, ...(command === 'plan' ? { destination: process.stderr, pretty: false } : {}) });
  // One node bootstraps at a time (several k3s servers each run the daemon); plan never writes.
  const leaseStore = command === 'apply' ? new KubeLeaseStore(new Credentials(settings).path('kubeconfig')) : undefined;
  const lease = leaseStore ? new BootstrapLease(leaseStore, { ...leaseSettingsFromEnv(), log, onWait: (text) => notifyStatus(text) }) : undefined;
  const release = acquireLock(opts.stateDir);
  const started = Date.now();
  try {
    notifyStatus(`${command}: starting`);
    let reports: StepReport[];
    try {
      reports = await runAll(command, settings, opts.only, opts.stateDir, log, lease);
    } finally {
      await lease?.release();
      leaseStore?.close();
    }
    // `status` tells about converging runs; a plan changes nothing worth recording.
    if (command === 'apply') recordRun(opts.stateDir, command, started, reports);
    const ok = reports.every(succeeded);
    const conflicts = reports.some((r) => r.outcome === 'conflict');
    notifyStatus(`${command}: ${ok ? (conflicts ? 'done, with reported conflicts' : 'done') : 'failed'}`);
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
    if (!ok) return EXIT.failed;
    // Converged except for records someone else must move: reported, not failed (no systemd retry).
    return conflicts ? EXIT.conflicts : EXIT.ok;
  } finally {
    log.flush?.();
    release();
  }
}

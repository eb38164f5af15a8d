#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { realpathSync } from 'node:fs';
// Only what every command needs is imported here: `--version` and `validate-config` (run at Nix
// build time on every rebuild) must not pay for the Kubernetes, Helm and Cloudflare code that
// only `plan` and `apply` use. Each command loads its own modules below.
import { LockHeldError } from './engine/lock.ts';
import { scrub } from './secret.ts';
import { defaultStateDir } from './engine/state.ts';
import { STEP_NAMES, type StepName } from './steps/types.ts';
import { EXIT } from './exit.ts';
export { EXIT };

import { VERSION } from './version.ts';
export { VERSION };

const USAGE = `homelab-bootstrap ${VERSION}: brings k3s to "ArgoCD owns everything", idempotently.

Usage:
  homelab-bootstrap render --config FILE [--output yaml|json]   desired state; contacts nothing
  homelab-bootstrap plan --config FILE                          what apply would change (exit 2 if anything)
  homelab-bootstrap apply --config FILE [--only STEP]...        converge (exit 0 when every step converged, 4 when only reported conflicts remain)
  homelab-bootstrap status [--state-dir DIR]                    last run per step
  homelab-bootstrap validate-config FILE [--check-files]        validate settings (Nix build time)
  homelab-bootstrap doctor --config FILE [--skip-host]          old-stack leftovers in the cluster and on this host (exit 3 if any)
  homelab-bootstrap check-repo --config FILE --repo DIR         the GitOps tree decrypts with the host age key, hosts agree (exit 1 if not)
  homelab-bootstrap --version

Steps: ${STEP_NAMES.join(', ')}
Options: --state-dir DIR (default $STATE_DIRECTORY), --log-level LEVEL
`;

class UsageError extends Error {}

export interface Io {
  out(text: string): void;
  err(text: string): void;
}

const stdio: Io = { out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) };

function needConfig(config: string | undefined): string {
  if (!config) throw new UsageError('missing --config FILE');
  return config;
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
        repo: { type: 'string' },
        'skip-host': { type: 'boolean' },
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
        const { loadSettings, SettingsError } = await import('./settings/load.ts');
        const { Credentials, CREDENTIAL_NAMES } = await import('./credentials.ts');
        const { existsSync } = await import('node:fs');
        const settings = loadSettings(file);
        if (o['check-files']) {
          const credentials = new Credentials(settings);
          const missing = CREDENTIAL_NAMES.filter((n) => credentials.configured(n))
            .map((n) => ({ n, p: credentials.path(n) }))
            .filter(({ p }) => !existsSync(p))
            .map(({ n, p }) => `${credentials.field(n)}: ${p} does not exist (the ${n} credential)`);
          if (missing.length > 0) throw new SettingsError(file, missing);
        }
        const { dnsWarnings } = await import('./desired/dns.ts');
        for (const w of dnsWarnings(settings)) io.err(`${file}: warning: ${w}\n`);
        io.out(`${file}: valid\n`);
        return EXIT.ok;
      }
      case 'render': {
        const format = o.output ?? 'yaml';
        if (format !== 'yaml' && format !== 'json') throw new UsageError(`--output must be yaml or json, got ${format}`);
        const [{ loadSettings }, { formatRendered, render }] = await Promise.all([import('./settings/load.ts'), import('./render.ts')]);
        io.out(formatRendered(render(loadSettings(needConfig(o.config))), format));
        return EXIT.ok;
      }
      case 'doctor': {
        const [{ loadSettings }, { Credentials }, { createLogger }, { KubeClient }, { DoctorError, runDoctor }, { formatFinding }] = await Promise.all([
          import('./settings/load.ts'),
          import('./credentials.ts'),
          import('./log.ts'),
          import('./adapters/kube.ts'),
          import('./doctor/doctor.ts'),
          import('./doctor/findings.ts'),
        ]);
        const settings = loadSettings(needConfig(o.config));
        const log = createLogger({ level: o['log-level'] ?? 'warn', destination: process.stderr, pretty: false });
        const kube = new KubeClient(new Credentials(settings).path('kubeconfig'), log);
        try {
          const report = await runDoctor(kube, { host: !o['skip-host'] });
          for (const f of report.findings) io.out(`${formatFinding(f)}\n`);
          for (const n of report.notes) io.out(`note: ${n}\n`);
          if (report.findings.length === 0) {
            io.out(`no leftovers of the old stack found (cluster at ${kube.server}${o['skip-host'] ? '' : ' and this host'})\n`);
            return EXIT.ok;
          }
          io.out(`${report.findings.length} finding${report.findings.length === 1 ? '' : 's'}; doctor changed nothing (see docs/migration.md)\n`);
          return EXIT.doctorFindings;
        } catch (e) {
          if (!(e instanceof DoctorError)) throw e;
          io.err(`doctor: ${e.message}\n`);
          return EXIT.failed;
        } finally {
          kube.close();
        }
      }
      case 'check-repo': {
        const file = needConfig(o.config);
        if (!o.repo) throw new UsageError('check-repo needs --repo DIR (the root of the repository the root ApplicationSet syncs)');
        const [{ loadSettings }, { Credentials }, { checkRepo }, { formatProblem }] = await Promise.all([
          import('./settings/load.ts'),
          import('./credentials.ts'),
          import('./check-repo/check-repo.ts'),
          import('./check-repo/checks.ts'),
        ]);
        const settings = loadSettings(file);
        const r = await checkRepo(settings, file, new Credentials(settings), o.repo);
        for (const p of r.problems) io.out(`${formatProblem(p)}\n`);
        if (r.problems.length > 0) {
          io.out(`${r.problems.length} problem${r.problems.length === 1 ? '' : 's'} in ${o.repo}\n`);
          return EXIT.failed;
        }
        io.out(`${o.repo}: ${r.checked.encrypted} encrypted file(s) decrypt with the host key, ${r.checked.generators} ksops generator(s) complete, ${r.checked.hosts} host(s) agree with the tree\n`);
        return EXIT.ok;
      }
      case 'status': {
        const [{ readState }, { formatNotes }] = await Promise.all([import('./engine/state.ts'), import('./format.ts')]);
        const state = readState(stateDir);
        if (!state.lastRun) {
          io.out(`no run recorded in ${stateDir}\n`);
          return EXIT.ok;
        }
        const r = state.lastRun;
        io.out(`last run: ${r.mode} at ${r.at}, ${r.ok ? 'ok' : 'FAILED'}, ${r.changes} changes, ${(r.durationMs / 1000).toFixed(1)}s\n`);
        for (const [step, s] of Object.entries(state.steps)) {
          io.out(`${step.padEnd(12)} ${s.outcome.padEnd(9)} ${s.at} ${(s.durationMs / 1000).toFixed(1)}s ${s.changes} changes${s.error ? `  ${s.error}` : ''}\n`);
          for (const line of formatNotes(s.notes, ' '.repeat(13))) io.out(`${line}\n`);
        }
        if (!r.ok) return EXIT.failed;
        return Object.values(state.steps).some((s) => s.outcome === 'conflict') ? EXIT.conflicts : EXIT.ok;
      }
      case 'plan':
      case 'apply': {
        const only = (o.only ?? []).flatMap((s) => s.split(',')).filter(Boolean);
        const unknown = only.filter((s) => !(STEP_NAMES as readonly string[]).includes(s));
        if (unknown.length > 0) throw new UsageError(`unknown step(s) in --only: ${unknown.join(', ')}; steps are ${STEP_NAMES.join(', ')}`);
        const { converge } = await import('./commands/converge.ts');
        return await converge(command, { config: needConfig(o.config), only: only as StepName[], stateDir, logLevel: o['log-level'] }, io);
      }
      default:
        throw new UsageError(`unknown command ${command}`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`${e.message}\n\n${USAGE}`);
      return EXIT.usage;
    }
    // By name: the class lives with zod, which commands that never load settings do not import.
    if ((e as Error | undefined)?.name === 'SettingsError') {
      io.err(`${(e as Error).message}\n`);
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

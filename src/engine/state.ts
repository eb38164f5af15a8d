// The last run per step, for `status`. Written atomically so a killed run never leaves
// a half-written file.
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { homedir } from 'node:os';
import type { StepReport } from './run.ts';
import { isWrite } from '../steps/types.ts';
import { scrub } from '../secret.ts';

export interface StepState {
  outcome: StepReport['outcome'];
  at: string;
  durationMs: number;
  changes: number;
  error?: string;
  /** The step's notes (e.g. the tunnel's connectors when it last ran). */
  notes?: string[];
}

export interface RunState {
  lastRun?: { mode: string; at: string; durationMs: number; ok: boolean; changes: number };
  steps: Record<string, StepState>;
}

export function defaultStateDir(): string {
  return process.env.STATE_DIRECTORY?.split(':')[0] || join(process.env.XDG_STATE_HOME || join(homedir(), '.local', 'state'), 'homelab-bootstrap');
}

export function readState(stateDir: string): RunState {
  try {
    return JSON.parse(readFileSync(join(stateDir, 'state.json'), 'utf8')) as RunState;
  } catch {
    return { steps: {} };
  }
}

export function recordRun(stateDir: string, mode: string, startedAt: number, reports: StepReport[]): RunState {
  const prev = readState(stateDir);
  const state: RunState = { steps: { ...prev.steps } };
  let changes = 0;
  for (const r of reports) {
    const n = r.changes.filter(isWrite).length;
    changes += n;
    // Steps only observed for their outputs did not run: keep their last real record.
    if (r.outcome === 'observed') continue;
    state.steps[r.step] = { outcome: r.outcome, at: r.startedAt, durationMs: r.durationMs, changes: n, ...(r.error ? { error: r.error } : {}), ...(r.notes ? { notes: r.notes } : {}) };
  }
  state.lastRun = {
    mode,
    at: new Date(startedAt).toISOString(),
    durationMs: Date.now() - startedAt,
    ok: reports.every((r) => r.outcome !== 'failed' && r.outcome !== 'blocked'),
    changes,
  };
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const file = join(stateDir, 'state.json');
  // Scrubbed as a whole: the file outlives the run, and `status` prints it.
  writeFileSync(`${file}.tmp`, scrub(JSON.stringify(state, null, 2)) + '\n', { mode: 0o600 });
  renameSync(`${file}.tmp`, file);
  return state;
}

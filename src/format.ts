// Human output of plan and apply: terse, one line per change, diffs indented under it.
import type { StepReport } from './engine/run.ts';
import { isWrite, type Change } from './steps/types.ts';
import { formatDiff } from './diff.ts';

const SIGN: Record<Change['action'], string> = { create: '+', update: '~', delete: '-', noop: '=', wait: '…', conflict: '!' };

export function formatChange(c: Change): string[] {
  return [`  ${SIGN[c.action]} ${c.action} ${c.target}${c.detail ? `: ${c.detail}` : ''}`, ...formatDiff(c.diff ?? []).map((l) => `      ${l}`)];
}

export function countWrites(reports: readonly StepReport[]): number {
  return reports.reduce((n, r) => n + r.changes.filter(isWrite).length, 0);
}

export function formatPlan(reports: readonly StepReport[]): string {
  const lines: string[] = [];
  const tally = { create: 0, update: 0, delete: 0, conflict: 0, wait: 0 };
  for (const r of reports) {
    const visible = r.changes.filter((c) => c.action !== 'noop');
    if (r.outcome === 'failed' || r.outcome === 'blocked') {
      lines.push(`${r.step}: ${r.outcome}: ${r.error ?? ''}`);
      continue;
    }
    if (r.outcome === 'skipped') continue;
    lines.push(`${r.step}: ${visible.length === 0 ? 'no changes' : ''}`.trimEnd());
    for (const c of visible) {
      lines.push(...formatChange(c));
      if (c.action in tally) tally[c.action as keyof typeof tally]++;
    }
  }
  lines.push('');
  lines.push(`Plan: ${tally.create} to create, ${tally.update} to update, ${tally.delete} to delete, ${tally.conflict} conflict(s), ${tally.wait} wait(s).`);
  return lines.join('\n') + '\n';
}

export function formatSummary(reports: readonly StepReport[], title = 'apply'): string {
  const w = Math.max(...reports.map((r) => r.step.length), 4);
  const lines = [`${'step'.padEnd(w)}  ${'outcome'.padEnd(9)}  changes  duration`];
  for (const r of reports) {
    const n = r.changes.filter(isWrite).length;
    lines.push(`${r.step.padEnd(w)}  ${r.outcome.padEnd(9)}  ${String(n).padStart(7)}  ${(r.durationMs / 1000).toFixed(1).padStart(7)}s${r.error ? `  ${r.error}` : ''}`);
  }
  const failed = reports.filter((r) => r.outcome === 'failed' || r.outcome === 'blocked').length;
  const conflicts = reports.filter((r) => r.outcome === 'conflict').length;
  lines.push(`${title}: ${reports.length} steps, ${countWrites(reports)} changes, ${failed} failed${conflicts > 0 ? `, ${conflicts} with conflicts to resolve by hand` : ''}`);
  return lines.join('\n') + '\n';
}

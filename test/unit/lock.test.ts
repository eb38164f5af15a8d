// The run lock: exclusive among real processes racing for it, with and without a stale lock
// (a holder killed with SIGKILL) in the way.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { acquireLock, LockHeldError } from '../../src/engine/lock.ts';

const fixtures = join(import.meta.dirname, '..', 'fixtures');
const deadPid = () => Number(spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' }).stdout.trim());

test('the lock keeps a second run out; released, it can be taken again', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hb-lock-'));
  const release = acquireLock(dir);
  assert.throws(() => acquireLock(dir), (e) => e instanceof LockHeldError && new RegExp(`another run \\(pid ${process.pid}, since .+\\) holds ${dir}/run\\.lock\\.1`).test(e.message));
  release();
  acquireLock(dir)();
  // One generation file is left (released), nothing else: no temporary files, no older generations.
  assert.deepEqual(readdirSync(dir), ['run.lock.2']);
  assert.equal(JSON.parse(readFileSync(join(dir, 'run.lock.2'), 'utf8')).released, true);
});

test('a holder killed with SIGKILL leaves a stale lock that the next run takes over', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hb-lock-'));
  const killed = spawnSync(process.execPath, [join(fixtures, 'lock-killed.ts'), dir]);
  assert.equal(killed.signal, 'SIGKILL');
  assert.deepEqual(readdirSync(dir).filter((n) => n.startsWith('run.lock')), ['run.lock.1']);
  const release = acquireLock(dir);
  assert.ok(readdirSync(dir).includes('run.lock.2'));
  assert.ok(!readdirSync(dir).includes('run.lock.1'), 'the stale generation was not cleared');
  release();
});

test('a lock of an earlier boot is stale even if its pid is alive now; so is the single lock file of earlier versions', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hb-lock-'));
  writeFileSync(join(dir, 'run.lock.7'), JSON.stringify({ pid: process.pid, boot: 'another-boot', since: 'yesterday' }));
  writeFileSync(join(dir, 'run.lock'), JSON.stringify({ pid: deadPid(), since: 'earlier' }));
  acquireLock(dir)();
  assert.deepEqual(readdirSync(dir), ['run.lock.8']);
});

test('200 races among real processes, a stale lock in every 10th: never two holders at once', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hb-lock-race-'));
  const rounds = 200;
  const racers = 3;
  // Far enough ahead for every racer to have started (node start-up on a loaded machine).
  let at = Date.now() + 8000;
  const schedule = Array.from({ length: rounds }, (_, i) => {
    const stale = i % 10 === 5;
    at += stale ? 1500 : 60;
    return { at, stale };
  });
  const runs = Array.from({ length: racers }, (_, i) =>
    new Promise<{ wins: number; held: number; doubles: number; stalePlanted: number; late: number }>((resolve, reject) => {
      const p = spawn(process.execPath, [join(fixtures, 'lock-racer.ts'), dir, JSON.stringify(schedule), String(i), join(fixtures, 'lock-killed.ts')], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      p.stdout.on('data', (c: Buffer) => (out += c));
      p.on('error', reject);
      p.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`racer ${i} exited ${code}`))));
    }),
  );
  const tallies = await Promise.all(runs);
  const sum = (k: keyof (typeof tallies)[number]) => tallies.reduce((n, x) => n + x[k], 0);
  t.diagnostic(`${rounds} rounds x ${racers} racers: ${sum('wins')} takes, ${sum('held')} refused as held, ${sum('doubles')} double holders, ${sum('stalePlanted')} stale locks planted in time, ${sum('late')} late starts`);
  assert.equal(sum('doubles'), 0);
  assert.equal(sum('wins') + sum('held'), rounds * racers);
  // Not vacuous: races were lost (the racers met), every round had a winner, stale locks were taken over.
  assert.ok(sum('held') >= rounds / 2, `only ${sum('held')} refusals: the racers hardly met`);
  assert.ok(sum('wins') >= rounds, `only ${sum('wins')} takes in ${rounds} rounds`);
  assert.ok(sum('stalePlanted') >= 10, `only ${sum('stalePlanted')} stale locks were in place in time`);
});

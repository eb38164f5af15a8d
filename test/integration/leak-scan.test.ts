// Leak scan: a full apply (cold, then no-op, as `npm run demo` does) through the real CLI
// against the rig, with a known age identity and a known Cloudflare API token, and then a
// search for those secrets everywhere a secret must never end up: every log line, the state
// file, the settings file, the argv and environment of every process the CLI started (helm
// included, sampled from /proc every ~20 ms while it ran), Kubernetes Events, ConfigMaps, the
// helm releases' stored values, and the apiserver's audit log. Then the same with a token file
// that has a second line (an HTTP client would quote that whole header, token included, in its
// error): apply, plan and status, their stdout and stderr, the state file and the systemd status
// lines (a stand-in systemd-notify records them) must not carry it either.
//
// The age key does legitimately live in Secret argocd/sops-age-key (and the tunnel token in
// cloudflared/tunnel-token): Secret data is not scanned. A secret committed under test/ is fine;
// the one here is generated per run anyway.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { binDir, binPath, repoRoot } from '../rig/binaries.ts';
import { startControlPlane, type ControlPlane } from '../rig/control-plane.ts';
import { playCiliumOperator } from '../rig/crds.ts';
import { kubeJson } from '../rig/kube-http.ts';
import { CloudflareEmulator } from '../rig/cloudflare-emulator.ts';
import { readState } from '../../src/engine/state.ts';
import { demoSettings } from '../rig/bootstrap-run.ts';
import { ageKeygen, encryptInto, ksopsGenerator, secretYaml, sopsConfig, write } from '../rig/sops-tree.ts';

const cli = join(repoRoot, 'src', 'cli.ts');

let cp: ControlPlane;
let emu: CloudflareEmulator;
let dir: string;
let config: string;
let stateDir: string;

/** What the scan looks for, by name (the names go into failure messages, the values never do). */
const secrets = new Map<string, string>();

interface ProcSample {
  pid: number;
  comm: string;
  cmdline: string;
  environ: string;
}

interface CliRun {
  code: number;
  /** stdout and stderr, every byte the CLI printed. */
  output: string;
  /** One entry per distinct (pid, cmdline, environ) seen among the CLI and its descendants. */
  processes: ProcSample[];
  polls: number;
}

const runs: CliRun[] = [];
/** `check-repo` and `doctor`, run with the same secrets in reach. */
const checkRuns: CliRun[] = [];
/** plan, apply and status with the two-line token file: every output path. */
const badTokenRuns: { what: string; run: CliRun }[] = [];
let notifyLog: string;
let badStateDir: string;

function readProc(pid: number, what: string): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/${what}`, 'latin1');
  } catch {
    return undefined; // gone already, or a kernel thread
  }
}

/** pid -> parent pid of every process now running. */
function parents(): Map<number, number> {
  const out = new Map<number, number>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = readProc(Number(name), 'stat');
    if (!stat) continue;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    out.set(Number(name), ppid);
  }
  return out;
}

function descendantsOf(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const [pid, ppid] of parents()) children.set(ppid, [...(children.get(ppid) ?? []), pid]);
  const out: number[] = [];
  const todo = [root];
  while (todo.length > 0) {
    const pid = todo.pop()!;
    out.push(pid);
    todo.push(...(children.get(pid) ?? []));
  }
  return out;
}

/** The CLI as a child process, its process tree sampled every ~20 ms until it exits. */
function runCli(args: string[], env: NodeJS.ProcessEnv): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (c: Buffer) => void (output += c.toString('latin1')));
    child.stderr.on('data', (c: Buffer) => void (output += c.toString('latin1')));
    const seen = new Map<string, ProcSample>();
    let polls = 0;
    const poll = () => {
      polls++;
      for (const pid of descendantsOf(child.pid!)) {
        const cmdline = readProc(pid, 'cmdline');
        const environ = readProc(pid, 'environ');
        // An exited, not yet reaped process (a zombie) shows an empty argv and environment.
        if (!cmdline || environ === undefined) continue;
        const comm = (readProc(pid, 'comm') ?? '').trim();
        const key = `${pid}\0${cmdline}\0${environ}`;
        if (!seen.has(key)) seen.set(key, { pid, comm, cmdline: cmdline.split('\0').join(' ').trim(), environ: environ.split('\0').join('\n') });
      }
    };
    const timer = setInterval(poll, 20);
    poll();
    child.on('error', (e) => {
      clearInterval(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearInterval(timer);
      resolve({ code: code ?? -1, output, processes: [...seen.values()], polls });
    });
  });
}

/** Fails naming the artefact and the secret, never printing the secret or the text around it. */
function assertClean(what: string, text: string): void {
  const lower = text.toLowerCase();
  for (const [name, value] of secrets) {
    assert.ok(!lower.includes(value.toLowerCase()), `${what} contains ${name}`);
  }
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'hb-leak-'));
  // Controllers and a kwok node: the demo settings wait for Cilium's Pods, and argo-cd's hook Job must complete.
  cp = await startControlPlane({ controllers: true });
  const token = randomBytes(24).toString('hex');
  const accountId = randomBytes(16).toString('hex');
  emu = await CloudflareEmulator.start({ token, accountId, zones: ['peterstorm.io'] });

  const ageKeyFile = join(dir, 'keys.txt');
  execFileSync(binPath('age-keygen'), ['-o', ageKeyFile], { stdio: 'ignore' });
  const keyText = readFileSync(ageKeyFile, 'utf8');
  const keyLine = keyText.split('\n').find((l) => l.startsWith('AGE-SECRET-KEY-1'));
  assert.ok(keyLine, 'age-keygen wrote no identity');
  secrets.set('the age secret key', keyLine);
  // The Bech32 body alone, and the whole file base64-encoded as the Secret holds it.
  secrets.set('the body of the age secret key', keyLine.slice('AGE-SECRET-KEY-1'.length));
  secrets.set('the age key file, base64', Buffer.from(keyText).toString('base64'));
  secrets.set('the Cloudflare API token', token);
  secrets.set('the Cloudflare API token, base64', Buffer.from(token).toString('base64').replace(/=+$/, ''));
  secrets.set('the kubeconfig bearer token', cp.token);

  const tokenFile = join(dir, 'cloudflare-token');
  writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
  config = join(dir, 'homelab.json');
  writeFileSync(config, JSON.stringify(demoSettings({ kubeconfig: cp.kubeconfigPath, ageKeyFile, tokenFile, apiBaseUrl: emu.baseUrl, accountId }), null, 2));
  stateDir = join(dir, 'state');

  // debug: the most the daemon ever logs (helm argv, every request). No secret in this env.
  const env = { PATH: `${binDir()}:${process.env.PATH}`, HOME: dir, LOG_LEVEL: 'debug' };
  const args = ['apply', '--config', config, '--state-dir', stateDir];
  const operator = playCiliumOperator(cp, 3000);
  runs.push(await runCli(args, env));
  await operator.done;
  runs.push(await runCli(args, env));

  // The tunnel token is a secret too (it lives in Secret cloudflared/tunnel-token, nowhere else).
  const tunnel = emu.liveTunnels()[0];
  assert.ok(tunnel, 'the cold apply made no tunnel');
  secrets.set('the tunnel token', emu.tunnelToken(tunnel.id));

  // check-repo on a tree holding a known secret, encrypted to the host key (decrypts) and to another
  // key (fails, so sops' error path is scanned too); then doctor on the bootstrapped cluster.
  const repo = join(dir, 'repo');
  const value = randomBytes(18).toString('base64url');
  secrets.set('a secret value in the GitOps tree', value);
  const recipient = execFileSync(binPath('age-keygen'), ['-y', ageKeyFile], { encoding: 'utf8' }).trim();
  write(repo, '.sops.yaml', sopsConfig('manifests/argocd-homelab/.*\\.enc\\.(yaml|json)$', [recipient]));
  write(repo, 'manifests/argocd-homelab/media/transmission/ksops-generator.yaml', ksopsGenerator('vpn', ['./secrets.enc.yaml']));
  encryptInto(repo, 'manifests/argocd-homelab/media/transmission/secrets.enc.yaml', secretYaml('transmission-vpn', { OPENVPN_PASSWORD: value }));
  const other = ageKeygen(join(dir, 'other-keys.txt'));
  secrets.set('the other age secret key', other.identity);
  encryptInto(repo, 'manifests/argocd-homelab/apps/echo-server/secrets.enc.yaml', secretYaml('echo', { token: value }), [other.recipient]);
  checkRuns.push(await runCli(['check-repo', '--config', config, '--repo', repo], env));
  checkRuns.push(await runCli(['doctor', '--config', config], env));
  // A token file with a second line, as an editor or `echo >>` leaves it.
  const second = randomBytes(16).toString('hex');
  secrets.set('the second line of the token file', second);
  const badTokenFile = join(dir, 'cloudflare-token-two-lines');
  writeFileSync(badTokenFile, `${token}\n${second}\n`, { mode: 0o600 });
  const badConfig = join(dir, 'homelab-two-line-token.json');
  writeFileSync(badConfig, JSON.stringify(demoSettings({ kubeconfig: cp.kubeconfigPath, ageKeyFile, tokenFile: badTokenFile, apiBaseUrl: emu.baseUrl, accountId }), null, 2));
  badStateDir = join(dir, 'state-two-line-token');
  // systemd's status line: a stand-in systemd-notify on PATH records every --status it is given.
  const fakeBin = join(dir, 'fake-bin');
  notifyLog = join(dir, 'notify.log');
  mkdirSync(fakeBin);
  writeFileSync(join(fakeBin, 'systemd-notify'), `#!/bin/sh\nprintf '%s\\n' "$*" >> '${notifyLog}'\n`, { mode: 0o755 });
  const notifyEnv = { ...env, PATH: `${fakeBin}:${env.PATH}`, NOTIFY_SOCKET: join(dir, 'notify.sock') };
  for (const what of ['apply', 'plan'] as const) {
    badTokenRuns.push({ what, run: await runCli([what, '--config', badConfig, '--state-dir', badStateDir], notifyEnv) });
  }
  badTokenRuns.push({ what: 'status', run: await runCli(['status', '--state-dir', badStateDir], notifyEnv) });
});

after(async () => {
  await emu?.stop();
  await cp?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('the applies converged (cold, then a no-op), so the scan covers a real run', () => {
  assert.equal(runs[0]!.code, 0, runs[0]!.output.slice(-3000));
  assert.equal(runs[1]!.code, 0, runs[1]!.output.slice(-3000));
  assert.equal(readState(stateDir).lastRun?.changes, 0);
});

test('no log line (stdout, stderr) holds a secret', () => {
  for (const [i, r] of runs.entries()) {
    assert.ok(r.output.split('\n').length > 20, `run ${i}: suspiciously few log lines`);
    for (const [n, line] of r.output.split('\n').entries()) assertClean(`run ${i} log line ${n + 1}`, line);
  }
});

test('check-repo and doctor: their output, argv and environment (sops included) hold no secret', () => {
  const [checkRepo, doctor] = checkRuns;
  assert.equal(checkRepo!.code, 1, checkRepo!.output);
  assert.match(checkRepo!.output, /apps\/echo-server\/secrets\.enc\.yaml: does not decrypt with the host key/);
  assert.doesNotMatch(checkRepo!.output, /media\/transmission\/secrets\.enc\.yaml: does not decrypt/);
  assert.notEqual(doctor!.code, 1, doctor!.output);
  for (const [i, r] of checkRuns.entries()) {
    for (const [n, line] of r.output.split('\n').entries()) assertClean(`${i === 0 ? 'check-repo' : 'doctor'} output line ${n + 1}`, line);
    for (const p of r.processes) {
      assertClean(`argv of ${p.comm} (pid ${p.pid})`, p.cmdline);
      assertClean(`environment of ${p.comm} (pid ${p.pid})`, p.environ);
    }
  }
  const sops = checkRuns[0]!.processes.filter((p) => p.comm === 'sops');
  assert.ok(sops.length >= 1, `sops was not seen in ${checkRuns[0]!.polls} polls`);
  // The key reaches sops as a path, and sops gets none of the caller's environment.
  for (const p of sops) if (p.environ) assert.match(p.environ, /^SOPS_AGE_KEY_FILE=\//m);
});

test('the state file and the settings file hold no secret', () => {
  assertClean('state.json', readFileSync(join(stateDir, 'state.json'), 'utf8'));
  assertClean('the settings file', readFileSync(config, 'utf8'));
});

test('no argv or environment of the CLI or any process it started (helm) holds a secret', () => {
  const all = runs.flatMap((r) => r.processes);
  const helm = all.filter((p) => p.comm === 'helm');
  // Not vacuous: the sampling saw helm, including a long-running upgrade, and read its environment.
  assert.ok(helm.length >= 2, `helm was seen ${helm.length} times in ${runs.map((r) => r.polls).join('+')} polls`);
  assert.ok(helm.some((p) => / upgrade /.test(p.cmdline)), `no helm upgrade seen: ${helm.map((p) => p.cmdline).join(' | ')}`);
  // Some, not every: a process that exits between the two reads leaves an empty environment.
  assert.ok(helm.filter((p) => p.environ.includes('HELM_CACHE_HOME=')).length >= 2, 'the environment of helm was not read');
  assert.ok(all.some((p) => p.cmdline.includes(cli)), 'the CLI process itself was not sampled');
  for (const p of all) {
    assertClean(`argv of ${p.comm} (pid ${p.pid}: ${p.cmdline.slice(0, 60)}…)`, p.cmdline);
    assertClean(`environment of ${p.comm} (pid ${p.pid})`, p.environ);
  }
});

test('no Kubernetes Event, ConfigMap or stored helm value holds a secret', async () => {
  const core = await kubeJson<{ items: unknown[] }>(cp.rig, 'GET', '/api/v1/events');
  const v1 = await kubeJson<{ items: unknown[] }>(cp.rig, 'GET', '/apis/events.k8s.io/v1/events');
  assertClean('Events (core/v1)', JSON.stringify(core.json));
  assertClean('Events (events.k8s.io/v1)', JSON.stringify(v1.json));
  const cms = await kubeJson<{ items: unknown[] }>(cp.rig, 'GET', '/api/v1/configmaps');
  assert.ok((cms.json?.items.length ?? 0) > 0, 'no ConfigMaps to scan');
  assertClean('ConfigMaps', JSON.stringify(cms.json));
  // The values helm keeps in its release Secrets, as helm itself shows them.
  const rigKubeconfig = join(cp.dir, 'rig-kubeconfig');
  for (const [name, ns] of [['cilium', 'kube-system'], ['argocd', 'argocd']] as const) {
    // The real argo-cd release renders megabytes (its CRDs): more than execFileSync's default buffer.
    const values = execFileSync(binPath('helm'), ['get', 'all', name, '--namespace', ns, '--kubeconfig', rigKubeconfig], { encoding: 'utf8', env: { PATH: process.env.PATH, HOME: dir }, maxBuffer: 64 * 1024 * 1024 });
    assert.ok(values.length > 0);
    assertClean(`helm release ${ns}/${name} (values and manifest)`, values);
  }
});

test('the apiserver audit log holds no secret', () => {
  const audit = readFileSync(cp.auditLogPath, 'utf8');
  assert.ok(audit.includes('"verb":"patch"'), 'the audit log shows no writes: nothing was scanned');
  assertClean('the audit log', audit);
});

test('a token file with a second line: apply, plan and status fail with the file named, and no output path carries the token', () => {
  const [apply, plan, status] = badTokenRuns.map((r) => r.run);
  const named = /cloudflare-api-token credential \S+cloudflare-token-two-lines \(\$\.cloudflare\.apiTokenFile\) holds 2 lines; it must hold the API token alone, on one line/;
  assert.equal(apply!.code, 1, apply!.output.slice(-2000));
  assert.match(apply!.output, named);
  // The summary on stdout carries the step error.
  assert.match(apply!.output, /tunnel +failed +0 +[\d.]+s +cloudflare-api-token credential/);
  assert.equal(plan!.code, 1);
  assert.match(plan!.output, /tunnel: failed: cloudflare-api-token credential/);
  assert.match(status!.output, /tunnel +failed .*holds 2 lines/);
  const state = readFileSync(join(badStateDir, 'state.json'), 'utf8');
  assert.match(state, /holds 2 lines/);
  assert.ok(existsSync(notifyLog), 'no systemd status line was recorded');
  const notify = readFileSync(notifyLog, 'utf8');
  assert.match(notify, /--status=tunnel: failed/);
  for (const { what, run } of badTokenRuns) for (const [n, line] of run.output.split('\n').entries()) assertClean(`${what} (two-line token) output line ${n + 1}`, line);
  assertClean('state.json (two-line token)', state);
  assertClean('the systemd status lines', notify);
});

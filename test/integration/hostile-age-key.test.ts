// Hostile age key files, through the real CLI (`apply --only age-key`, so preflight runs as an
// observed dependency) against the rig's real kube-apiserver: missing, empty, a directory, the
// wrong kind of key, a corrupted key, unreadable for the service user, 50 MB, /dev/zero. Each
// must give a clear error that names the path and the settings field, must leave Secret
// argocd/sops-age-key exactly as it was (not created, not changed), and must not print a byte
// of what the file holds: a wrong file may well be another secret.
//
// The tests run as root, which reads any file whatever its mode; the unreadable case runs the
// CLI as `nobody` through setpriv (util-linux) instead, like a hardened service user.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { chmodSync, chownSync, closeSync, copyFileSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { binPath, repoRoot } from '../rig/binaries.ts';
import { startControlPlane, type ControlPlane } from '../rig/control-plane.ts';
import { kubeRequest } from '../rig/kube-http.ts';
import { EXIT } from '../../src/cli.ts';

const NOBODY = 65534;
const cli = join(repoRoot, 'src', 'cli.ts');
const BECH32 = 'qpzry9x8gf2tvdw0s3jn54khce6mua7l';

let cp: ControlPlane;
let dir: string;
/** A valid identity file as age-keygen writes it (comments, then the key line). */
let validKeyFile: string;
let validKeyText: string;
let validKeyLine: string;

interface CliRun {
  code: number;
  out: string;
  /** getrusage maxRSS of the CLI process, kB. */
  maxRssKb: number;
  ms: number;
}

/** `apply --only age-key` with `ageKeyFile` in its settings; as `nobody` when asked. */
async function applyAgeKey(ageKeyFile: string, opts: { asNobody?: boolean } = {}): Promise<CliRun> {
  const runDir = mkdtempSync(join(dir, 'run-'));
  chmodSync(runDir, 0o755);
  const kubeconfig = join(runDir, 'kubeconfig');
  copyFileSync(cp.kubeconfigPath, kubeconfig);
  chmodSync(kubeconfig, 0o600);
  const settings = JSON.parse(readFileSync(join(repoRoot, 'examples', 'homelab.json'), 'utf8')) as Record<string, unknown>;
  delete settings.cloudflare; // not needed by age-key; its token file would be one more credential
  settings.kubeconfigFile = kubeconfig;
  settings.sops = { ageKeyFile };
  const config = join(runDir, 'settings.json');
  writeFileSync(config, JSON.stringify(settings), { mode: 0o644 });
  const stateDir = join(runDir, 'state');
  const home = join(runDir, 'home');
  mkdirSync(stateDir, { mode: 0o700 });
  mkdirSync(home, { mode: 0o700 });
  const rssFile = join(runDir, 'rss');
  if (opts.asNobody) for (const p of [runDir, kubeconfig, stateDir, home]) chownSync(p, NOBODY, NOBODY);
  // The CLI's own peak RSS, written by a preload as it exits (see scripts/bench.ts).
  const preload = `import { writeFileSync } from 'node:fs'; process.on('exit', () => writeFileSync(${JSON.stringify(rssFile)}, String(process.resourceUsage().maxRSS)));`;
  const argv = [`--import=data:text/javascript,${encodeURIComponent(preload)}`, cli, 'apply', '--only', 'age-key', '--config', config, '--state-dir', stateDir];
  const [file, args] = opts.asNobody
    ? ['setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--', process.execPath, ...argv]]
    : [process.execPath, argv];
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(file as string, args as string[], {
      env: { PATH: process.env.PATH, HOME: home, LOG_LEVEL: 'debug' },
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 120_000,
    });
    let out = '';
    child.stdout.on('data', (c: Buffer) => void (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => void (out += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      let maxRssKb = 0;
      try {
        maxRssKb = Number(readFileSync(rssFile, 'utf8'));
      } catch {
        // the process died before its exit hook
      }
      rmSync(runDir, { recursive: true, force: true });
      resolve({ code: code ?? -1, out, maxRssKb, ms: performance.now() - started });
    });
  });
}

interface SecretSnapshot {
  status: number;
  resourceVersion?: string;
  data?: Record<string, string>;
}

async function secretNow(): Promise<SecretSnapshot> {
  const res = await kubeRequest(cp.rig, 'GET', '/api/v1/namespaces/argocd/secrets/sops-age-key');
  if (res.status === 404) return { status: 404 };
  assert.equal(res.status, 200, res.body);
  const obj = JSON.parse(res.body) as { metadata: { resourceVersion: string }; data?: Record<string, string> };
  return { status: 200, resourceVersion: obj.metadata.resourceVersion, data: obj.data };
}

async function namespaceStatus(): Promise<number> {
  return (await kubeRequest(cp.rig, 'GET', '/api/v1/namespaces/argocd')).status;
}

/**
 * Pieces of `content` that must not appear in the output: every line long enough to be more
 * than a common word, and for long lines, windows of it, so a partial quote is caught too.
 */
function material(content: string | Buffer): string[] {
  const text = Buffer.isBuffer(content) ? content.toString('latin1') : content;
  const out = new Set<string>();
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l.length >= 12 && !/^#/.test(l));
  for (const line of lines.slice(0, 200)) {
    out.add(line);
    for (let i = 0; i + 16 <= line.length && i < 16 * 64; i += 16) out.add(line.slice(i, i + 16));
  }
  return [...out];
}

/** Content material plus the key-line forms a careless message would print (lower case, body, base64). */
function keyMaterial(keyLine: string): string[] {
  const body = keyLine.slice('AGE-SECRET-KEY-1'.length);
  return [keyLine, keyLine.toLowerCase(), body, body.toLowerCase(), body.slice(0, 20), Buffer.from(keyLine).toString('base64').slice(0, 40)];
}

function assertNoLeak(out: string, secrets: string[], what: string): void {
  const lower = out.toLowerCase();
  for (const s of secrets) {
    if (s.length < 12) continue;
    assert.ok(!out.includes(s) && !lower.includes(s.toLowerCase()), `${what}: the output holds part of the key file (${s.slice(0, 6)}…)`);
  }
}

/** A Bech32-alphabet key-like line (not valid: the checksum is random). */
function keyLikeLine(): string {
  return `AGE-SECRET-KEY-1${Array.from(randomBytes(58), (b) => BECH32[b % 32]).join('').toUpperCase()}`;
}

function corrupt(keyLine: string): string {
  // Change one data character to another alphabet character: still Bech32, bad checksum.
  const i = 'AGE-SECRET-KEY-1'.length + 10;
  const c = keyLine[i]!.toLowerCase();
  const other = BECH32[(BECH32.indexOf(c) + 1) % 32]!.toUpperCase();
  return keyLine.slice(0, i) + other + keyLine.slice(i + 1);
}

interface Hostile {
  name: string;
  /** Makes the file (or not) and returns its path and what must never be printed. */
  make(): { path: string; secrets: string[] };
  expect: RegExp;
  asNobody?: boolean;
  /** Also checked before any Secret exists: not created. */
  beforeSecret?: boolean;
}

function file(name: string, content: string | Buffer, mode = 0o600): string {
  const p = join(dir, name);
  writeFileSync(p, content, { mode });
  chmodSync(p, mode);
  return p;
}

const HOSTILE: Hostile[] = [
  {
    name: 'missing file',
    make: () => ({ path: join(dir, 'no-such-dir', 'keys.txt'), secrets: [] }),
    expect: /does not exist/,
    beforeSecret: true,
  },
  { name: 'empty file', make: () => ({ path: file('empty.txt', ''), secrets: [] }), expect: /is empty/ },
  { name: 'only whitespace', make: () => ({ path: file('blank.txt', '\n  \n\t\n'), secrets: [] }), expect: /is empty/ },
  {
    name: 'a directory',
    make: () => {
      const p = join(dir, 'keys-dir');
      mkdirSync(p, { recursive: true });
      return { path: p, secrets: [] };
    },
    expect: /is a directory/,
  },
  {
    name: 'an SSH private key (PEM)',
    make: () => {
      const pem = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
      return { path: file('id_ed25519', pem), secrets: material(pem) };
    },
    expect: /line 1 is not an age X25519 identity/,
    beforeSecret: true,
  },
  {
    name: 'an OpenSSH private key',
    make: () => {
      const body = randomBytes(300).toString('base64').replace(/(.{70})/g, '$1\n');
      const text = `-----BEGIN OPENSSH PRIVATE KEY-----\n${body}\n-----END OPENSSH PRIVATE KEY-----\n`;
      return { path: file('id_openssh', text), secrets: material(text) };
    },
    expect: /line 1 is not an age X25519 identity/,
  },
  {
    name: 'random text',
    make: () => {
      const text = Array.from({ length: 20 }, () => randomBytes(30).toString('base64')).join('\n');
      return { path: file('random.txt', text), secrets: material(text) };
    },
    expect: /line 1 is not an age X25519 identity/,
  },
  {
    name: 'binary garbage',
    make: () => {
      const bytes = randomBytes(4096);
      return { path: file('random.bin', bytes), secrets: material(bytes) };
    },
    expect: /line \d+ (is not an age X25519 identity|has leading or trailing whitespace)/,
  },
  {
    name: 'a corrupted key (bad Bech32 checksum)',
    make: () => {
      const line = corrupt(validKeyLine);
      return { path: file('corrupt.txt', `# created: 2026-01-01\n${line}\n`), secrets: [...keyMaterial(line), ...keyMaterial(validKeyLine)] };
    },
    expect: /line 2 is not a valid age identity: it has a bad Bech32 checksum/,
  },
  {
    name: 'a truncated key',
    make: () => {
      const line = validKeyLine.slice(0, -9);
      return { path: file('truncated.txt', `${line}\n`), secrets: keyMaterial(line) };
    },
    expect: /line 1 is not a valid age identity/,
  },
  {
    name: 'a key with trailing whitespace',
    make: () => ({ path: file('trailing.txt', `${validKeyLine}  \n`), secrets: keyMaterial(validKeyLine) }),
    expect: /line 1 has leading or trailing whitespace/,
  },
  {
    name: 'a good key, then a bad line',
    make: () => {
      const bad = keyLikeLine();
      return { path: file('good-then-bad.txt', `${validKeyText}${bad}\n`), secrets: [...keyMaterial(validKeyLine), ...keyMaterial(bad)] };
    },
    expect: /line 4 is not a valid age identity/,
  },
  {
    name: 'the public key instead of the identity',
    make: () => {
      const pub = /# public key: (age1\S+)/.exec(validKeyText)![1]!;
      return { path: file('public.txt', `${pub}\n`), secrets: keyMaterial(validKeyLine) };
    },
    expect: /line 1 is a public key \(age1…\), not an identity/,
  },
  {
    name: 'unreadable for the service user (runs as nobody)',
    make: () => ({ path: file('root-only.txt', validKeyText, 0o600), secrets: keyMaterial(validKeyLine) }),
    expect: /is not readable \(permission denied\)/,
    asNobody: true,
  },
  {
    name: '50 MB of key-like lines',
    make: () => {
      const p = join(dir, 'huge.txt');
      const line = `${keyLikeLine()}\n`;
      const chunk = Buffer.from(line.repeat(Math.ceil((1024 * 1024) / line.length)));
      const fd = openSync(p, 'w', 0o600);
      for (let written = 0; written < 50 * 1024 * 1024; written += chunk.length) writeSync(fd, chunk);
      closeSync(fd);
      return { path: p, secrets: keyMaterial(line.trim()) };
    },
    expect: /is larger than 1024 KiB/,
    beforeSecret: true,
  },
  {
    name: 'a symlink to /dev/zero (never ends)',
    make: () => {
      const p = join(dir, 'zero.txt');
      rmSync(p, { force: true });
      symlinkSync('/dev/zero', p);
      return { path: p, secrets: [] };
    },
    expect: /is a character device, not a regular file; it cannot be the age-key \(wrong path\?\)/,
  },
];

/** Peak RSS of a run that fails at once (missing file): what a bounded read is compared with. */
let baselineRssKb = 0;

before(async () => {
  // Fail loudly, not skip, when the one tool the unreadable case needs is missing.
  assert.equal(spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'true']).status, 0, 'setpriv (util-linux) must be able to drop to nobody');
  dir = mkdtempSync(join(tmpdir(), 'hb-hostile-age-'));
  chmodSync(dir, 0o755); // nobody must reach its run directory (not the key files, which stay 0600 root)
  cp = await startControlPlane();
  validKeyFile = join(dir, 'valid.txt');
  execFileSync(binPath('age-keygen'), ['-o', validKeyFile], { stdio: 'ignore' });
  validKeyText = readFileSync(validKeyFile, 'utf8');
  validKeyLine = validKeyText.split('\n').find((l) => l.startsWith('AGE-SECRET-KEY-1'))!;
  assert.ok(validKeyLine, 'age-keygen wrote no identity');
});

after(async () => {
  await cp?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function checkHostile(h: Hostile, before: SecretSnapshot): Promise<CliRun> {
  const { path, secrets } = h.make();
  const r = await applyAgeKey(path, { asNobody: h.asNobody });
  const where = `${h.name} (${path})`;
  assert.equal(r.code, EXIT.failed, `${where}: exit ${r.code}\n${r.out}`);
  assert.match(r.out, h.expect, `${where}: the expected reason is missing\n${r.out}`);
  assert.ok(r.out.includes(path), `${where}: the error does not name the path\n${r.out}`);
  assert.ok(r.out.includes('$.sops.ageKeyFile'), `${where}: the error does not name the settings field\n${r.out}`);
  // A failure, not a crash: a step error in the log and the summary, no stack trace.
  assert.match(r.out, /"step":"preflight".*"outcome":"failed"/, `${where}\n${r.out}`);
  assert.match(r.out, /age-key\s+blocked/, `${where}: age-key must not run\n${r.out}`);
  assert.doesNotMatch(r.out, /\n\s+at .+:\d+:\d+\)?\n/, `${where}: stack trace\n${r.out}`);
  assertNoLeak(r.out, secrets, where);
  assert.deepEqual(await secretNow(), before, `${where}: Secret argocd/sops-age-key changed`);
  return r;
}

test('before any Secret exists, a hostile key creates neither the namespace nor the Secret', async () => {
  assert.equal((await secretNow()).status, 404);
  for (const h of HOSTILE.filter((x) => x.beforeSecret)) {
    const r = await checkHostile(h, { status: 404 });
    if (h.name === 'missing file') baselineRssKb = r.maxRssKb;
    assert.equal(await namespaceStatus(), 404, `${h.name}: namespace argocd was created`);
  }
  assert.ok(baselineRssKb > 0, 'the baseline run reported no RSS');
});

test('control: the valid key is written, as root and (unchanged) as nobody', async () => {
  const r = await applyAgeKey(validKeyFile);
  assert.equal(r.code, EXIT.ok, r.out);
  const s = await secretNow();
  assert.equal(s.status, 200);
  assert.equal(Buffer.from(s.data!['keys.txt']!, 'base64').toString('utf8'), validKeyText);
  assertNoLeak(r.out, keyMaterial(validKeyLine), 'valid key');
  // The same run as nobody, with a key file nobody may read: proves the setpriv set-up works,
  // so the unreadable case below fails for its file and not for the set-up.
  const readable = join(dir, 'nobody-readable.txt');
  writeFileSync(readable, validKeyText, { mode: 0o600 });
  chownSync(readable, NOBODY, NOBODY);
  const n = await applyAgeKey(readable, { asNobody: true });
  assert.equal(n.code, EXIT.ok, n.out);
  assert.match(n.out, /age-key\s+unchanged/, n.out);
  assert.deepEqual(await secretNow(), s, 'an identical key must not rewrite the Secret');
});

for (const h of HOSTILE) {
  test(`hostile key: ${h.name}: clear error naming the path, Secret untouched, nothing of the file printed`, async () => {
    const before = await secretNow();
    assert.equal(before.status, 200, 'the control test writes the Secret first');
    const r = await checkHostile(h, before);
    if (h.name.startsWith('50 MB') || h.name.includes('/dev/zero')) {
      // Bounded read: the process grows by about the read limit, not by the file (50 MB read
      // whole as UTF-8 is well over 100 MB more), and /dev/zero does not hang it.
      const grewMb = (r.maxRssKb - baselineRssKb) / 1024;
      assert.ok(grewMb < 40, `${h.name}: peak RSS ${Math.round(r.maxRssKb / 1024)} MiB, ${grewMb.toFixed(1)} MiB over a run that fails at once`);
    }
  });
}

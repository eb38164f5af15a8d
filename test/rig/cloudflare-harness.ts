// Drives the Cloudflare steps (tunnel, dns) against the emulator and a real kube-apiserver, the
// way the engine drives them: settings from examples/homelab.json pointed at the rig, a logger
// whose lines the test reads, and the step run retried while its error is transient.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ControlPlane } from './control-plane.ts';
import type { CloudflareEmulator } from './cloudflare-emulator.ts';
import { parseSettings } from '../../src/settings/load.ts';
import type { Settings } from '../../src/settings/schema.ts';
import { Credentials } from '../../src/credentials.ts';
import { createAdapters, type Adapters } from '../../src/adapters/index.ts';
import { CloudflareClient, type CloudflareClientOptions } from '../../src/adapters/cloudflare.ts';
import { createLogger, type Logger } from '../../src/log.ts';
import type { Change, Outputs, Step, StepContext } from '../../src/steps/types.ts';
import { isTransient, retryAfterMs } from '../../src/engine/errors.ts';

export const CF_ACCOUNT = '0123456789abcdef0123456789abcdef';
export const CF_TOKEN = 'cf-api-token-for-the-emulator-0123456789';
export const example = JSON.parse(readFileSync(new URL('../../examples/homelab.json', import.meta.url), 'utf8')) as Record<string, any>;

export interface CfHarness {
  settings: Settings;
  adapters: Adapters;
  log: Logger;
  /** Every log line, as JSON text. */
  lines: string[];
}

/**
 * examples/homelab.json, pointed at the rig; the API token file is `<dir>/cf-token`. `mutate`
 * edits the settings before they are parsed; `cloudflare` builds the Cloudflare client with
 * these options instead of the defaults.
 */
export function cfHarness(cp: ControlPlane, emu: CloudflareEmulator, dir: string, mutate: (s: Record<string, any>) => void = () => {}, cloudflare?: CloudflareClientOptions): CfHarness {
  const s = structuredClone(example);
  s.kubeconfigFile = cp.kubeconfigPath;
  s.cloudflare.apiTokenFile = join(dir, 'cf-token');
  s.cloudflare.apiBaseUrl = emu.baseUrl;
  s.cloudflare.accountId = CF_ACCOUNT;
  mutate(s);
  const settings = parseSettings(s);
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk, _enc, cb) {
      lines.push(String(chunk));
      cb();
    },
  });
  const log = createLogger({ level: 'debug', pretty: false, destination: sink });
  const credentials = new Credentials(settings);
  const base = createAdapters(settings, credentials, log);
  if (!cloudflare) return { settings, adapters: base, log, lines };
  const client = new CloudflareClient(settings, credentials, log, cloudflare);
  const adapters: Adapters = {
    get kube() {
      return base.kube;
    },
    get helm() {
      return base.helm;
    },
    releaseMemo: base.releaseMemo,
    cloudflare: client,
  };
  return { settings, adapters, log, lines };
}

export function stepContext(h: CfHarness, step: Step, upstream: Outputs, signal = new AbortController().signal): StepContext {
  return { settings: h.settings, log: h.log.child({ step: step.name }), signal, credentials: new Credentials(h.settings), adapters: h.adapters, upstream, progress: () => {} };
}

export interface Driven {
  changes: Change[];
  outputs: Outputs;
  notes: string[];
  attempts: number;
}

/** One step as the engine runs it: retried while the error is transient, honouring retry-after (capped at 2 s). */
export async function driveStep(h: CfHarness, step: Step, upstream: Outputs = {}, attempts = 8): Promise<Driven> {
  for (let attempt = 1; ; attempt++) {
    try {
      const ctx = stepContext(h, step, upstream);
      const want = step.want(h.settings, upstream);
      const have = await step.have(ctx, want);
      const changes = step.changes(want, have);
      let outputs: Outputs = step.outputs?.(want, have) ?? {};
      if (changes.some((c) => c.action !== 'noop')) outputs = { ...outputs, ...((await step.change(ctx, changes, want, have)) ?? {}) };
      return { changes, outputs, notes: step.notes?.(want, have) ?? [], attempts: attempt };
    } catch (e) {
      if (!isTransient(e) || attempt >= attempts) throw e;
      await sleep(Math.min(retryAfterMs(e) ?? 100, 2000));
    }
  }
}

export const writesOf = (changes: readonly Change[]): Change[] => changes.filter((c) => c.action === 'create' || c.action === 'update' || c.action === 'delete');

// systemd status line, so `systemctl status homelab-bootstrap` says what the run waits for.
// node:child_process, not execa: this runs on every step of every run, and execa costs a
// noticeable share of start-up for a fire-and-forget call.
import { spawn } from 'node:child_process';
import { scrub } from '../secret.ts';

export function notifyStatus(text: string): void {
  if (!process.env.NOTIFY_SOCKET) return;
  // Fire and forget: a missing systemd-notify must never fail a run.
  try {
    spawn('systemd-notify', [`--status=${scrub(text).slice(0, 200)}`], { stdio: 'ignore' }).on('error', () => {}).unref();
  } catch {
    /* no systemd-notify: nothing to report to */
  }
}

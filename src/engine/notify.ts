// systemd status line, so `systemctl status homelab-bootstrap` says what the run waits for.
import { execa } from 'execa';
import { scrub } from '../secret.ts';

export function notifyStatus(text: string): void {
  if (!process.env.NOTIFY_SOCKET) return;
  // Fire and forget: a missing systemd-notify must never fail a run.
  execa('systemd-notify', [`--status=${scrub(text).slice(0, 200)}`], { reject: false, stdio: 'ignore' }).catch(() => {});
}

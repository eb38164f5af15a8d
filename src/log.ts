// JSON lines for journald, pretty on a TTY. Every line passes scrub(), so a secret that
// slipped into a message or an error still never reaches the journal.
import { pino, type Logger } from 'pino';
import { scrub } from './secret.ts';

export type { Logger };

export interface LogOptions {
  level?: string;
  pretty?: boolean;
  destination?: NodeJS.WritableStream; // tests capture lines here
}

export function createLogger(opts: LogOptions = {}): Logger {
  const pretty = opts.pretty ?? (process.stdout.isTTY && !opts.destination);
  const options = {
    level: opts.level ?? process.env.LOG_LEVEL ?? 'info',
    base: undefined,
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
    redact: { paths: ['token', 'password', 'secret', '*.token', '*.password', '*.secret', 'headers.authorization'], censor: '[REDACTED]' },
    hooks: { streamWrite: (s: string) => scrub(s) },
  };
  if (pretty) {
    return pino(options, pino.transport({ target: 'pino-pretty', options: { ignore: 'pid,hostname', translateTime: 'SYS:HH:MM:ss' } }));
  }
  return pino(options, (opts.destination as pino.DestinationStream | undefined) ?? pino.destination({ dest: 1, sync: true }));
}

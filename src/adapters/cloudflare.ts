// Thin adapter over the official `cloudflare` SDK. (Stub: the Cloudflare-steps work fills it in.)
import type { Logger } from 'pino';
import type { Settings } from '../settings/schema.ts';
import type { Credentials } from '../credentials.ts';

export class CloudflareClient {
  readonly settings: Settings;
  readonly credentials: Credentials;
  readonly log: Logger;
  constructor(settings: Settings, credentials: Credentials, log: Logger) {
    this.settings = settings;
    this.credentials = credentials;
    this.log = log;
  }
}

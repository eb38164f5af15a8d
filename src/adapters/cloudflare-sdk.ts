// The part of the `cloudflare` SDK the daemon calls, and nothing else: its tree-shakable
// client with the resources the adapter uses. Run from source this still loads the whole SDK
// (the client's module imports every resource), but the built daemon (scripts/build.ts) is
// bundled, and there the other resources of the API fall away: about 30 MiB less memory on
// every boot. A call on a resource missing here fails the typecheck, not at run time.
import { createClient } from 'cloudflare/tree-shakable';
import type { ClientOptions } from 'cloudflare/client';
import { BaseZones } from 'cloudflare/resources/zones/zones';
import { BaseRecords } from 'cloudflare/resources/dns/records';
import { BaseCloudflared } from 'cloudflare/resources/zero-trust/tunnels/cloudflared/cloudflared';
import { BaseConfigurations } from 'cloudflare/resources/zero-trust/tunnels/cloudflared/configurations';
import { BaseConnections } from 'cloudflare/resources/zero-trust/tunnels/cloudflared/connections';
import { BaseToken } from 'cloudflare/resources/zero-trust/tunnels/cloudflared/token';

export { APIConnectionError, APIError, APIUserAbortError } from 'cloudflare/core/error';

const RESOURCES = [BaseZones, BaseRecords, BaseCloudflared, BaseConfigurations, BaseConnections, BaseToken] as const;

export function cloudflareSdk(options: ClientOptions) {
  return createClient({ ...options, resources: RESOURCES });
}

export type CloudflareSdk = ReturnType<typeof cloudflareSdk>;

// The Cloudflare emulator as a process, for the demo and the NixOS VM tests:
//   node test/rig/cloudflare-emulator-main.ts --port 8787 --token-file /run/token --zone example.org
// Schema checks are off unless --schema names the OpenAPI file: they need the ajv package,
// and the NixOS VM test runs this file with nothing but Node.
// Prints its base URL (the daemon's cloudflare.apiBaseUrl) as the first stdout line, then
// serves until SIGTERM/SIGINT. Faults and the request log are reachable under /__emulator/.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ALL_PERMISSIONS, CloudflareEmulator, type Permission } from './cloudflare-emulator.ts';

const USAGE = `usage: cloudflare-emulator-main.ts [--host 127.0.0.1] [--port 0] (--token T | --token-file F)
       [--permissions zone:read,dns:edit,tunnel:edit] [--account-id HEX32] [--zone NAME[=ID]]...
       [--schema ../shared/cloudflare/openapi-subset.json]`;

function fail(msg: string): never {
  process.stderr.write(`${msg}\n${USAGE}\n`);
  process.exit(2);
}

const { values } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '0' },
    token: { type: 'string' },
    'token-file': { type: 'string' },
    permissions: { type: 'string' },
    'account-id': { type: 'string' },
    zone: { type: 'string', multiple: true },
    schema: { type: 'string' },
    help: { type: 'boolean' },
  },
  strict: true,
});
if (values.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}

const port = Number(values.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`--port: got "${values.port}"; expected 0-65535`);
let token = values.token;
if (values['token-file']) token = readFileSync(values['token-file'], 'utf8').trim();
if (!token) fail('one of --token or --token-file is required');
let permissions: Permission[] = [...ALL_PERMISSIONS];
if (values.permissions !== undefined) {
  permissions = values.permissions.split(',').map((p) => p.trim()).filter(Boolean) as Permission[];
  const bad = permissions.filter((p) => !ALL_PERMISSIONS.includes(p));
  if (bad.length > 0) fail(`--permissions: unknown ${bad.join(', ')}; known: ${ALL_PERMISSIONS.join(', ')}`);
}
const accountId = values['account-id'];
if (accountId !== undefined && !/^[0-9a-f]{32}$/.test(accountId)) fail('--account-id: expected 32 hex digits');

const zones = (values.zone ?? []).map((z) => {
  const [name, id] = z.split('=', 2);
  if (id !== undefined && !/^[0-9a-f]{32}$/.test(id)) fail(`--zone ${z}: the id must be 32 hex digits`);
  return { name: name!, ...(id ? { id } : {}) };
});

const emu = await CloudflareEmulator.start({ host: values.host, port, token, permissions, zones, schema: values.schema ?? false, ...(accountId ? { accountId } : {}) });
process.stdout.write(`${emu.baseUrl}\n`);
process.stderr.write(`cloudflare emulator: account ${emu.accountId}, zones ${[...emu.zones.values()].map((z) => `${z.name}=${z.id}`).join(' ') || '(none)'}\n`);

const shutdown = () =>
  void emu.stop().then(
    () => process.exit(0),
    (e: Error) => {
      process.stderr.write(`${e.message}\n`);
      process.exit(1);
    },
  );
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

// The shapes production answers with, each through the daemon's own client (src/adapters/
// cloudflare.ts), the account-wide rate limit on an injected clock, and the schema layer that
// holds the emulator to Cloudflare's OpenAPI schema.
import { after, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { CloudflareEmulator } from '../rig/cloudflare-emulator.ts';
import { CloudflareSchema } from '../rig/cloudflare-schema.ts';
import { parseSettings } from '../../src/settings/load.ts';
import { Credentials } from '../../src/credentials.ts';
import { CloudflareClient } from '../../src/adapters/cloudflare.ts';
import { createLogger } from '../../src/log.ts';

const TOKEN = 'shapes-test-token-0123456789';
const ACCOUNT = '0123456789abcdef0123456789abcdef';
const ZONE = 'example.org';
const MARKER = 'managed-by=homelab-bootstrap';

let emu: CloudflareEmulator;
let dir: string;

function client(): CloudflareClient {
  const settings = parseSettings({
    domain: ZONE,
    network: { lbPool: { start: '192.168.0.240', stop: '192.168.0.250' }, ingressIP: '192.168.0.240' },
    gitops: { repoURL: 'https://example.org/repo.git' },
    cloudflare: { accountId: ACCOUNT, apiTokenFile: join(dir, 'token'), apiBaseUrl: emu.baseUrl },
  });
  const log = createLogger({ level: 'warn', pretty: false, destination: new Writable({ write: (_c, _e, cb) => cb() }) });
  return new CloudflareClient(settings, new Credentials(settings), log, { maxRetries: 0 });
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'hb-cf-shapes-'));
  writeFileSync(join(dir, 'token'), TOKEN, { mode: 0o600 });
  emu = await CloudflareEmulator.start({ token: TOKEN, accountId: ACCOUNT, zones: [ZONE], globalRateLimit: false });
});
after(async () => {
  await emu.stop();
  rmSync(dir, { recursive: true, force: true });
});
beforeEach(() => {
  emu.tunnels.clear();
  for (const z of emu.zones.values()) z.records.clear();
  emu.resetLog();
});

describe('production shapes, through the client', () => {
  it('a tunnel that carries remote_config and no config_src is remotely managed (and one with remote_config false is local)', async () => {
    const remote = emu.seedTunnel({ name: 'homelab', remoteConfigOnly: true });
    emu.seedTunnel({ name: 'old', configSrc: 'local', remoteConfigOnly: true });
    const raw = (await (await fetch(`${emu.baseUrl}/accounts/${ACCOUNT}/cfd_tunnel?is_deleted=false`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as any;
    assert.ok(raw.result.every((t: any) => !('config_src' in t) && typeof t.remote_config === 'boolean'), 'the answer has no config_src');
    const tunnels = await client().listTunnels();
    assert.deepEqual(
      tunnels.map((t) => [t.name, t.configSrc]).sort(),
      [
        ['homelab', 'cloudflare'],
        ['old', 'local'],
      ],
    );
    assert.equal(tunnels.find((t) => t.name === 'homelab')!.id, remote.id);
  });

  it('lists without total_pages in result_info are read to the end (total_count, then a short page)', async () => {
    for (let i = 0; i < 150; i++) emu.seedTunnel({ name: `t${String(i).padStart(3, '0')}` });
    const tunnels = await client().listTunnels();
    assert.equal(tunnels.length, 150);
    assert.equal(new Set(tunnels.map((t) => t.id)).size, 150);
    const lists = emu.requests.filter((r) => r.method === 'GET');
    assert.deepEqual(lists.map((r) => r.query.page), ['1', '2'], 'two pages, no empty third one');
    const info = (await (await fetch(`${emu.baseUrl}/accounts/${ACCOUNT}/cfd_tunnel?per_page=100`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as any;
    assert.deepEqual(info.result_info, { page: 1, per_page: 100, count: 100, total_count: 150 });
  });

  it('a configuration result of null (a tunnel never configured) reads as no configuration', async () => {
    const t = emu.seedTunnel({ name: 'homelab' });
    const raw = (await (await fetch(`${emu.baseUrl}/accounts/${ACCOUNT}/cfd_tunnel/${t.id}/configurations`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as any;
    assert.equal(raw.result, null);
    assert.equal(await client().getTunnelConfig(t.id), null);
  });

  it('comment.* filters ignore case at Cloudflare; the client keeps only the exact ownership marker', async () => {
    emu.seedRecord(ZONE, { type: 'A', name: 'mine', content: '192.168.0.240', comment: MARKER });
    emu.seedRecord(ZONE, { type: 'A', name: 'shouting', content: '192.168.0.241', comment: MARKER.toUpperCase() });
    const z = emu.zone(ZONE);
    const raw = (await (await fetch(`${emu.baseUrl}/zones/${z.id}/dns_records?comment.startswith=${encodeURIComponent(MARKER)}`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as any;
    assert.deepEqual(raw.result.map((r: any) => r.name).sort(), [`mine.${ZONE}`, `shouting.${ZONE}`]);
    const owned = await client().listRecords(z.id, { commentStartsWith: MARKER });
    assert.deepEqual(owned.map((r) => r.name), [`mine.${ZONE}`]);
  });

  it('connectors are counted per cloudflared (distinct client ids), with the tunnel status, from the connections endpoint once the list carries none', async () => {
    const t = emu.seedTunnel({ name: 'homelab' });
    const c = client();
    const connectionGets = () => emu.requests.filter((r) => r.path.endsWith('/connections')).length;
    assert.deepEqual((await c.listTunnels()).map((x) => [x.connectors, x.status]), [[0, 'inactive']]);
    assert.equal(connectionGets(), 0, 'a tunnel that never ran is not asked');
    emu.connect(t.id);
    emu.connect(t.id, { conns: 2 });
    const list = (await (await fetch(`${emu.baseUrl}/accounts/${ACCOUNT}/cfd_tunnel`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as any;
    assert.deepEqual(list.result[0].connections, [], 'the deprecated array is empty (the emulator default)');
    assert.deepEqual((await c.listTunnels()).map((x) => [x.connectors, x.status]), [[2, 'healthy']]);
    assert.equal(connectionGets(), 1);
    // The connections endpoint lists the same connectors, with their connections (schema-checked like every answer).
    const raw = (await (await fetch(`${emu.baseUrl}/accounts/${ACCOUNT}/cfd_tunnel/${t.id}/connections`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as any;
    assert.deepEqual(raw.result.map((x: any) => x.conns.length), [4, 2]);
    emu.disconnect(t.id);
    emu.resetLog();
    assert.deepEqual((await c.listTunnels()).map((x) => [x.connectors, x.status]), [[0, 'down']]);
    assert.equal(connectionGets(), 0, 'a tunnel that is down is not asked');
  });
});

describe('the account-wide rate limit', () => {
  it('after 1,200 requests in 5 minutes, every request gets 429 with retry-after for the next 5 minutes', async () => {
    let nowMs = Date.parse('2026-01-01T00:00:00Z');
    const limited = await CloudflareEmulator.start({ token: TOKEN, accountId: ACCOUNT, zones: [ZONE], clock: () => nowMs });
    try {
      const zoneId = limited.zone(ZONE).id;
      const get = async () => {
        const res = await fetch(`${limited.baseUrl}/zones/${zoneId}`, { headers: { authorization: `Bearer ${TOKEN}` } });
        await res.arrayBuffer();
        return { status: res.status, retryAfter: res.headers.get('retry-after') };
      };
      for (let i = 0; i < 1200; i++) {
        nowMs += 200; // 1,200 requests spread over 4 minutes
        const r = await get();
        if (r.status !== 200) assert.fail(`request ${i + 1} got ${r.status}`);
      }
      nowMs += 1000;
      assert.deepEqual(await get(), { status: 429, retryAfter: '300' });
      nowMs += 4 * 60_000; // the window has slid past most of the 1,200, but the block holds
      assert.deepEqual(await get(), { status: 429, retryAfter: '60' });
      nowMs += 59_999;
      assert.equal((await get()).status, 429);
      nowMs += 1;
      assert.deepEqual(await get(), { status: 200, retryAfter: null });
      // The client sees a RateLimitedError carrying the wait.
      assert.deepEqual(limited.violations, []);
    } finally {
      await limited.stop();
    }
  });

  it('the client hands a long 429 to the engine with retry-after as the wait', async () => {
    emu.rateLimit(1, { retryAfterSeconds: 300 });
    await assert.rejects(client().listTunnels(), (e: any) => e.name === 'RateLimitedError' && e.retryAfterMs === 300_000);
  });
});

describe('OpenAPI schema checks', () => {
  it('the schema accepts what the client sends and the emulator answers, across every operation the daemon uses', async () => {
    const c = client();
    const zone = await (async () => {
      const z = emu.zone(ZONE);
      return { id: z.id };
    })();
    const { tunnel } = await c.ensureTunnel('homelab');
    await c.putTunnelIngress(tunnel.id, [{ hostname: `echo.${ZONE}`, service: 'http://svc:80' }, { service: 'http_status:404' }], null);
    await c.getTunnelConfig(tunnel.id);
    await c.getTunnelToken(tunnel.id);
    const rec = await c.createRecord(zone.id, { type: 'CNAME', name: `echo.${ZONE}`, content: `${tunnel.id}.cfargotunnel.com`, proxied: true, ttl: 1, comment: MARKER });
    await c.updateRecord(zone.id, rec.id, { type: 'CNAME', name: `echo.${ZONE}`, content: `${tunnel.id}.cfargotunnel.com`, proxied: true, ttl: 1, comment: `${MARKER} note` });
    await c.listRecords(zone.id, { name: `echo.${ZONE}` });
    await c.deleteRecord(zone.id, rec);
    assert.ok(emu.requests.length >= 9);
    assert.deepEqual(emu.violations, []);
  });

  it('a request the schema rejects is answered 400 "schema violation", not carried out, and kept', async () => {
    const z = emu.zone(ZONE);
    const res = await fetch(`${emu.baseUrl}/zones/${z.id}/dns_records`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'A', name: 'x', content: 'not-an-ip', proxied: 'yes' }),
    });
    const json = (await res.json()) as any;
    assert.equal(res.status, 400);
    assert.match(json.errors[0].message, /^schema violation: POST \/zones\/\{zone_id\}\/dns_records: body: /);
    assert.equal(emu.records(ZONE).length, 0);
    const v = emu.takeViolations();
    assert.equal(v.length, 1);
    assert.match(v[0]!, /schema violation \(request #\d+\)/);
  });

  it('an answer the schema rejects becomes a 500 "emulator schema violation", and stop() fails while it is kept', async () => {
    const broken = await CloudflareEmulator.start({ token: TOKEN, accountId: ACCOUNT, zones: [ZONE] });
    // An emulator bug: a zone without its name.
    (broken.zone(ZONE) as any).name = undefined;
    const res = await fetch(`${broken.baseUrl}/zones?per_page=5`, { headers: { authorization: `Bearer ${TOKEN}` } });
    const json = (await res.json()) as any;
    assert.equal(res.status, 500);
    assert.match(json.errors[0].message, /^emulator schema violation: GET \/zones → 200: /);
    await assert.rejects(broken.stop(), /Cloudflare emulator: 1 schema violation\(s\):\nschema violation \(answer to request #1\): GET \/zones/);
  });

  it('the documented overrides: name.exact on record lists, hostname-less catch-all, record bodies without read-only fields but with ttl, DELETE without body', () => {
    const schema = new CloudflareSchema();
    const zone = 'a'.repeat(32);
    assert.deepEqual(schema.checkRequest({ method: 'GET', path: `/zones/${zone}/dns_records`, query: { 'name.exact': 'a.example.org', 'comment.startswith': MARKER, page: '1', per_page: '5000' }, body: undefined }), []);
    assert.deepEqual(schema.checkRequest({ method: 'GET', path: `/zones/${zone}/dns_records`, query: { 'name.fuzzy': 'a' }, body: undefined }), ['GET /zones/{zone_id}/dns_records: query parameter name.fuzzy is not declared']);
    const tunnel = `/accounts/${zone}/cfd_tunnel/f70ff985-a4ef-4643-bbbc-4a0ed4fc8415`;
    assert.deepEqual(schema.checkRequest({ method: 'PUT', path: `${tunnel}/configurations`, query: {}, body: { config: { ingress: [{ hostname: 'a.example.org', service: 'http://x:80' }, { service: 'http_status:404' }], 'warp-routing': { enabled: true } } } }), []);
    assert.deepEqual(schema.checkRequest({ method: 'POST', path: `/zones/${zone}/dns_records`, query: {}, body: { type: 'A', name: 'a', content: '192.168.0.1', ttl: 1, proxied: false, comment: MARKER } }), []);
    assert.notDeepEqual(schema.checkRequest({ method: 'POST', path: `/zones/${zone}/dns_records`, query: {}, body: { type: 'A', name: 'a' } }), []);
    // ttl: required on a create and a full update (the API's rule, not the schema's), not on a patch.
    const noTtl = { type: 'A', name: 'a', content: '192.168.0.1', proxied: false, comment: MARKER };
    const record = `/zones/${zone}/dns_records/${'b'.repeat(32)}`;
    for (const [method, path] of [['POST', `/zones/${zone}/dns_records`], ['PUT', record]] as const) {
      assert.notDeepEqual(schema.checkRequest({ method, path, query: {}, body: noTtl }), [], `${method} without ttl`);
      assert.deepEqual(schema.checkRequest({ method, path, query: {}, body: { ...noTtl, ttl: 1 } }), [], `${method} with ttl`);
    }
    assert.deepEqual(schema.checkRequest({ method: 'PATCH', path: record, query: {}, body: { content: '192.168.0.2' } }), []);
    assert.deepEqual(schema.checkRequest({ method: 'POST', path: `/zones/${zone}/dns_records`, query: {}, body: { type: 'CAA', name: 'a', data: { flags: 0, tag: 'issue', value: 'letsencrypt.org' }, ttl: 1 } }), [], 'a CAA record needs no content');
    assert.deepEqual(schema.checkRequest({ method: 'DELETE', path: tunnel, query: {}, body: undefined }), []);
    assert.notDeepEqual(schema.checkRequest({ method: 'GET', path: `/accounts/${zone}/cfd_tunnel/not-a-uuid`, query: {}, body: undefined }), []);
  });
});

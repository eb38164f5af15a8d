// The emulator is only worth what its strictness is worth: one test per rule the real API
// enforces and per fault switch. Requests go through the official SDK where the point is that
// the emulator understands exactly what the SDK sends, and through plain fetch where the point
// is the raw HTTP answer (status, headers, a dropped connection).
import { after, before, beforeEach, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Cloudflare, APIError } from 'cloudflare';
import { CloudflareEmulator } from '../rig/cloudflare-emulator.ts';

const TOKEN = 'emulator-test-token-0123456789';
const ACCOUNT = '0123456789abcdef0123456789abcdef';
const MARKER = 'managed-by=homelab-bootstrap';

let emu: CloudflareEmulator;
let zoneId: string;

function sdk(token = TOKEN): Cloudflare {
  return new Cloudflare({ apiToken: token, apiKey: null, apiEmail: null, userServiceKey: null, baseURL: emu.baseUrl, maxRetries: 0, logLevel: 'off' });
}

async function raw(method: string, path: string, body?: unknown, token = TOKEN): Promise<{ status: number; headers: Headers; json: any; text: string }> {
  const res = await fetch(`${emu.baseUrl}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, json, text };
}

/** The first Cloudflare error code of a rejected SDK call. */
async function codeOf(p: Promise<unknown>): Promise<{ status: number | undefined; code: number | undefined }> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof APIError, `expected an APIError, got ${e}`);
    return { status: e.status, code: e.errors[0]?.code };
  }
  assert.fail('the call was accepted');
}

const record = (over: Record<string, unknown> = {}) => ({ zone_id: zoneId, type: 'A' as const, name: 'sonarr.example.org', content: '192.168.0.240', ttl: 1, proxied: false, comment: MARKER, ...over });

before(async () => {
  emu = await CloudflareEmulator.start({ token: TOKEN, accountId: ACCOUNT, globalRateLimit: false });
});
after(async () => {
  await emu.stop();
});
beforeEach(() => {
  emu.zones.clear();
  emu.tunnels.clear();
  emu.clearFaults();
  emu.resetLog();
  emu.setToken(TOKEN);
  zoneId = emu.addZone('example.org').id;
});

describe('envelope and authentication', () => {
  it('listens on loopback with an ephemeral port and answers in the v4 envelope', async () => {
    assert.match(emu.baseUrl, /^http:\/\/127\.0\.0\.1:\d+\/client\/v4$/);
    const r = await raw('GET', `/zones/${zoneId}`);
    assert.equal(r.status, 200);
    assert.deepEqual(Object.keys(r.json).sort(), ['errors', 'messages', 'result', 'success']);
    assert.equal(r.json.success, true);
    assert.equal(r.json.result.name, 'example.org');
  });

  it('a wrong token gets 403 "Invalid access token" (9109)', async () => {
    const r = await raw('GET', `/zones/${zoneId}`, undefined, 'not-the-token');
    assert.equal(r.status, 403);
    assert.equal(r.json.success, false);
    assert.equal(r.json.errors[0].code, 9109);
    assert.equal(r.json.result, null);
  });

  it('a request without a bearer token gets 400 with 6003/6111', async () => {
    const res = await fetch(`${emu.baseUrl}/zones`);
    const json = (await res.json()) as any;
    assert.equal(res.status, 400);
    assert.equal(json.errors[0].code, 6003);
    assert.equal(json.errors[0].error_chain[0].code, 6111);
  });

  it('a token without DNS Edit may list records but gets 403 "Authentication error" (10000) on writes', async () => {
    emu.setToken(TOKEN, ['zone:read', 'dns:read', 'tunnel:edit']);
    const cf = sdk();
    const page = await cf.dns.records.list({ zone_id: zoneId });
    assert.deepEqual(page.result, []);
    assert.deepEqual(await codeOf(cf.dns.records.create(record())), { status: 403, code: 10000 });
  });

  it('a token without Tunnel Edit gets 403 on tunnel writes', async () => {
    emu.setToken(TOKEN, ['zone:read', 'dns:edit', 'tunnel:read']);
    const cf = sdk();
    assert.deepEqual((await cf.zeroTrust.tunnels.cloudflared.list({ account_id: ACCOUNT })).result, []);
    assert.deepEqual(await codeOf(cf.zeroTrust.tunnels.cloudflared.create({ account_id: ACCOUNT, name: 'homelab', config_src: 'cloudflare' })), { status: 403, code: 10000 });
  });

  it('a token without Zone Read sees no zones (an empty list, as Cloudflare answers)', async () => {
    emu.setToken(TOKEN, ['dns:edit', 'tunnel:edit']);
    const page = await sdk().zones.list({ name: 'example.org' });
    assert.deepEqual(page.result, []);
  });

  it('tunnel calls on another account are refused like a missing permission', async () => {
    const other = 'ffffffffffffffffffffffffffffffff';
    assert.deepEqual(await codeOf(sdk().zeroTrust.tunnels.cloudflared.list({ account_id: other })), { status: 403, code: 10000 });
  });

  it('unknown routes get 404 with 7000', async () => {
    const r = await raw('GET', '/nope');
    assert.equal(r.status, 404);
    assert.equal(r.json.errors[0].code, 7000);
    // ...and a call to an operation the schema does not declare is a violation.
    assert.deepEqual(emu.takeViolations(), [`schema violation (request #${emu.requests.at(-1)!.seq}): GET /nope: no such operation in the schema`]);
  });
});

describe('zones', () => {
  it('finds a zone by name exactly as the SDK asks (name=…&account.id=…)', async () => {
    emu.addZone('other.org');
    const page = await sdk().zones.list({ name: 'example.org', account: { id: ACCOUNT } });
    assert.deepEqual(page.result.map((z) => z.name), ['example.org']);
    assert.equal(emu.requests.at(-1)!.search, `name=example.org&account.id=${ACCOUNT}`);
    assert.equal((await sdk().zones.get({ zone_id: zoneId })).id, zoneId);
  });
});

describe('DNS records', () => {
  it('pages with page/per_page and result_info, as the SDK sends them', async () => {
    for (let i = 0; i < 12; i++) emu.seedRecord('example.org', { type: 'A', name: `h${i}`, content: `192.168.0.${i + 1}`, ttl: 1 });
    const cf = sdk();
    const p2 = await cf.dns.records.list({ zone_id: zoneId, page: 2, per_page: 5 });
    assert.equal(p2.result.length, 5);
    // As the schema declares it: no total_pages.
    assert.deepEqual(p2.result_info, { page: 2, per_page: 5, count: 5, total_count: 12 } as any);
    assert.equal(emu.requests.at(-1)!.search, 'page=2&per_page=5');
    const p3 = await cf.dns.records.list({ zone_id: zoneId, page: 3, per_page: 5 });
    assert.equal(p3.result.length, 2);
    // The SDK's iterator walks every page (and asks for one past the end).
    let n = 0;
    for await (const _ of cf.dns.records.list({ zone_id: zoneId, per_page: 5 })) n++;
    assert.equal(n, 12);
  });

  it('rejects per_page outside 1..5,000,000 (the schema says so: answered 400 and kept as violations)', async () => {
    assert.equal((await raw('GET', `/zones/${zoneId}/dns_records?per_page=0`)).status, 400);
    assert.equal((await raw('GET', `/zones/${zoneId}/dns_records?per_page=5000001`)).status, 400);
    assert.equal((await raw('GET', `/zones/${zoneId}/dns_records?per_page=5000000`)).status, 200);
    const v = emu.takeViolations();
    assert.equal(v.length, 2);
    assert.match(v[0]!, /per_page="0": \/value must be >= 1/);
    assert.match(v[1]!, /per_page="5000001": \/value must be <= 5000000/);
  });

  it('filters by comment.startswith and name.exact as the SDK serialises them', async () => {
    emu.seedRecord('example.org', { type: 'A', name: 'sonarr', content: '192.168.0.240', comment: MARKER });
    emu.seedRecord('example.org', { type: 'A', name: 'radarr', content: '192.168.0.240', comment: `${MARKER} note` });
    emu.seedRecord('example.org', { type: 'A', name: 'nas', content: '192.168.0.10', comment: 'by hand' });
    emu.seedRecord('example.org', { type: 'TXT', name: 'sonarr', content: 'hello' });
    const cf = sdk();
    const owned = await cf.dns.records.list({ zone_id: zoneId, comment: { startswith: MARKER }, per_page: 100 });
    assert.deepEqual(owned.result.map((r) => r.name).sort(), ['radarr.example.org', 'sonarr.example.org']);
    assert.equal(emu.requests.at(-1)!.search, 'comment.startswith=managed-by%3Dhomelab-bootstrap&per_page=100');
    const byName = await cf.dns.records.list({ zone_id: zoneId, name: { exact: 'SONARR.example.org' } });
    assert.deepEqual(byName.result.map((r) => r.type).sort(), ['A', 'TXT']);
    assert.equal(emu.requests.at(-1)!.search, 'name.exact=SONARR.example.org');
    const both = await cf.dns.records.list({ zone_id: zoneId, name: { exact: 'sonarr.example.org' }, comment: { startswith: MARKER } });
    assert.deepEqual(both.result.map((r) => r.type), ['A']);
  });

  it('accepts a comment of exactly 100 characters and rejects 101 (Free plan)', async () => {
    const cf = sdk();
    await cf.dns.records.create(record({ comment: 'x'.repeat(100) }));
    assert.deepEqual(await codeOf(cf.dns.records.create(record({ name: 'b.example.org', comment: 'x'.repeat(101) }))), { status: 400, code: 9100 });
  });

  it('rejects tags with 9300 (not available on the Free plan)', async () => {
    assert.deepEqual(await codeOf(sdk().dns.records.create(record({ tags: ['owner:homelab'] }))), { status: 400, code: 9300 });
  });

  it('rejects proxying a private IP (9003) and accepts a public one', async () => {
    const cf = sdk();
    assert.deepEqual(await codeOf(cf.dns.records.create(record({ proxied: true }))), { status: 400, code: 9003 });
    const ok = await cf.dns.records.create(record({ name: 'pub.example.org', content: '203.0.113.7', proxied: true }));
    assert.equal(ok.proxied, true);
  });

  it('reads proxied records back with ttl 1, whatever ttl was sent', async () => {
    const r = await sdk().dns.records.create({ zone_id: zoneId, type: 'CNAME', name: 'echo', content: 'abc.cfargotunnel.com.', ttl: 300, proxied: true, comment: MARKER });
    assert.equal(r.ttl, 1);
    assert.equal(r.name, 'echo.example.org');
    assert.equal(r.content, 'abc.cfargotunnel.com');
  });

  it('rejects a TTL outside 60..86400 unless it is 1 (automatic)', async () => {
    assert.deepEqual(await codeOf(sdk().dns.records.create(record({ ttl: 30 }))), { status: 400, code: 9021 });
  });

  it('rejects a create or a full update without ttl (9021), as the API does; a patch may leave it out', async () => {
    // Schema checks off: the emulator's own answer, not the schema layer's 9207.
    const plain = await CloudflareEmulator.start({ token: TOKEN, accountId: ACCOUNT, zones: ['example.org'], globalRateLimit: false, schema: false });
    try {
      const z = plain.zone('example.org').id;
      const send = async (method: string, path: string, body: unknown) => {
        const res = await fetch(`${plain.baseUrl}${path}`, { method, headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
        return { status: res.status, json: (await res.json()) as any };
      };
      const noTtl = { type: 'A', name: 'a', content: '192.168.0.1' };
      const created = await send('POST', `/zones/${z}/dns_records`, noTtl);
      assert.deepEqual([created.status, created.json.errors[0].code], [400, 9021]);
      const ok = await send('POST', `/zones/${z}/dns_records`, { ...noTtl, ttl: 300 });
      assert.equal(ok.status, 200);
      const put = await send('PUT', `/zones/${z}/dns_records/${ok.json.result.id}`, { ...noTtl, content: '192.168.0.2' });
      assert.deepEqual([put.status, put.json.errors[0].code], [400, 9021]);
      const patch = await send('PATCH', `/zones/${z}/dns_records/${ok.json.result.id}`, { content: '192.168.0.2' });
      assert.deepEqual([patch.status, patch.json.result.ttl], [200, 300]);
    } finally {
      await plain.stop();
    }
  });

  it('rejects a CNAME beside an A, AAAA, CNAME or NS (81053) and an A or AAAA beside a CNAME (81054)', async () => {
    const cf = sdk();
    await cf.dns.records.create(record());
    assert.deepEqual(await codeOf(cf.dns.records.create(record({ type: 'CNAME', content: 'x.example.net' }))), { status: 400, code: 81053 });
    await cf.dns.records.create(record({ name: 'echo.example.org', type: 'CNAME', content: 'x.example.net' }));
    assert.deepEqual(await codeOf(cf.dns.records.create(record({ name: 'echo.example.org' }))), { status: 400, code: 81054 });
    assert.deepEqual(await codeOf(cf.dns.records.create(record({ name: 'echo.example.org', type: 'AAAA', content: '2001:db8::1' }))), { status: 400, code: 81054 });
    assert.deepEqual(await codeOf(cf.dns.records.create(record({ name: 'echo.example.org', type: 'CNAME', content: 'y.example.net' }))), { status: 400, code: 81053 });
    emu.seedRecord('example.org', { type: 'NS', name: 'lab', content: 'ns1.example.net' });
    assert.deepEqual(await codeOf(cf.dns.records.create(record({ name: 'lab.example.org', type: 'CNAME', content: 'x.example.net' }))), { status: 400, code: 81053 });
  });

  it("lets TXT, MX and CAA share a name with a CNAME, in either order (the apex included, where Cloudflare flattens the CNAME beside the zone's NS)", async () => {
    const cf = sdk();
    emu.seedRecord('example.org', { type: 'NS', name: '@', content: 'ada.ns.cloudflare.com' });
    emu.seedRecord('example.org', { type: 'TXT', name: 'txt', content: 'v=spf1 -all' });
    emu.seedRecord('example.org', { type: 'MX', name: '@', content: 'mail.example.net', priority: 10 });
    emu.seedRecord('example.org', { type: 'CAA', name: '@', data: { flags: 0, tag: 'issue', value: 'letsencrypt.org' } });
    await cf.dns.records.create(record({ name: 'txt.example.org', type: 'CNAME', content: 'x.example.net' }));
    const apex = await cf.dns.records.create(record({ name: '@', type: 'CNAME', content: 'abc.cfargotunnel.com', proxied: true }));
    assert.equal(apex.name, 'example.org');
    await cf.dns.records.create({ zone_id: zoneId, type: 'TXT', name: 'txt.example.org', content: 'second', ttl: 1 });
    const byName = (n: string) => emu.records('example.org').filter((r) => r.name === n).map((r) => r.type).sort();
    assert.deepEqual(byName('txt.example.org'), ['CNAME', 'TXT', 'TXT']);
    emu.seedRecord('example.org', { type: 'NS', name: '@', content: 'bob.ns.cloudflare.com' });
    assert.deepEqual(byName('example.org'), ['CAA', 'CNAME', 'MX', 'NS', 'NS']);
    assert.equal(emu.records('example.org').find((r) => r.type === 'CAA')!.content, '0 issue "letsencrypt.org"');
  });

  it('rejects an identical second record (81058) but, like Cloudflare, allows a second A with other content', async () => {
    const cf = sdk();
    await cf.dns.records.create(record());
    assert.deepEqual(await codeOf(cf.dns.records.create(record({ comment: 'different comment' }))), { status: 400, code: 81058 });
    await cf.dns.records.create(record({ content: '192.168.0.241' }));
    assert.equal(emu.records('example.org').length, 2);
  });

  it('rejects an A ↔ CNAME type change through update; patch, update and delete work otherwise', async () => {
    const cf = sdk();
    const r = await cf.dns.records.create(record());
    assert.deepEqual(await codeOf(cf.dns.records.update(r.id, { ...record(), type: 'CNAME', content: 'x.example.net' })), { status: 400, code: 9000 });
    const patched = await cf.dns.records.edit(r.id, { zone_id: zoneId, content: '192.168.0.241' } as any);
    assert.equal(patched.content, '192.168.0.241');
    assert.equal(patched.comment, MARKER, 'patch keeps the fields it was not given');
    const put = await cf.dns.records.update(r.id, record({ ttl: 300 }));
    assert.equal(put.ttl, 300);
    assert.equal(put.content, '192.168.0.240');
    assert.deepEqual(await cf.dns.records.delete(r.id, { zone_id: zoneId }), { id: r.id });
    assert.deepEqual(await codeOf(cf.dns.records.delete(r.id, { zone_id: zoneId })), { status: 404, code: 81044 });
    assert.deepEqual(
      emu.writes().map((w) => w.method),
      ['POST', 'PUT', 'PATCH', 'PUT', 'DELETE', 'DELETE'],
    );
  });
});

describe('tunnels', () => {
  it('creates, lists by name among non-deleted, refuses a second live tunnel of a name (409/1013), deletes', async () => {
    const cf = sdk();
    const t = await cf.zeroTrust.tunnels.cloudflared.create({ account_id: ACCOUNT, name: 'homelab', config_src: 'cloudflare' });
    assert.equal(t.name, 'homelab');
    assert.equal(t.config_src, 'cloudflare');
    assert.equal(t.remote_config, true);
    assert.equal(emu.requests.at(-1)!.body && JSON.stringify(emu.requests.at(-1)!.body), '{"name":"homelab","config_src":"cloudflare"}');
    assert.deepEqual(await codeOf(cf.zeroTrust.tunnels.cloudflared.create({ account_id: ACCOUNT, name: 'homelab', config_src: 'cloudflare' })), { status: 409, code: 1013 });
    const live = await cf.zeroTrust.tunnels.cloudflared.list({ account_id: ACCOUNT, name: 'homelab', is_deleted: false });
    assert.deepEqual(live.result.map((x) => x.id), [t.id]);
    assert.equal(emu.requests.at(-1)!.search, 'name=homelab&is_deleted=false');
    assert.equal((await cf.zeroTrust.tunnels.cloudflared.get(t.id!, { account_id: ACCOUNT })).id, t.id);
    await cf.zeroTrust.tunnels.cloudflared.delete(t.id!, { account_id: ACCOUNT });
    assert.deepEqual((await cf.zeroTrust.tunnels.cloudflared.list({ account_id: ACCOUNT, name: 'homelab', is_deleted: false })).result, []);
    assert.equal((await cf.zeroTrust.tunnels.cloudflared.list({ account_id: ACCOUNT, name: 'homelab', is_deleted: true })).result.length, 1);
    // The name is free again once the old tunnel is deleted.
    await cf.zeroTrust.tunnels.cloudflared.create({ account_id: ACCOUNT, name: 'homelab', config_src: 'cloudflare' });
  });

  it('returns the token as a bare string result that decodes to {a, t, s}', async () => {
    const cf = sdk();
    const t = await cf.zeroTrust.tunnels.cloudflared.create({ account_id: ACCOUNT, name: 'homelab', config_src: 'cloudflare' });
    const token = await cf.zeroTrust.tunnels.cloudflared.token.get(t.id!, { account_id: ACCOUNT });
    assert.equal(typeof token, 'string');
    const decoded = JSON.parse(Buffer.from(token, 'base64').toString('utf8'));
    assert.equal(decoded.a, ACCOUNT);
    assert.equal(decoded.t, t.id);
    assert.ok(Buffer.from(decoded.s, 'base64').length >= 32);
  });

  it('takes the configuration as {config: {ingress}}, reads it back with originRequest {} on each rule', async () => {
    const cf = sdk();
    const t = await cf.zeroTrust.tunnels.cloudflared.create({ account_id: ACCOUNT, name: 'homelab', config_src: 'cloudflare' });
    // Never configured: the result itself is null, as production answers.
    const before = await cf.zeroTrust.tunnels.cloudflared.configurations.get(t.id!, { account_id: ACCOUNT });
    assert.equal(before, null);
    const ingress = [{ hostname: 'echo.example.org', service: 'http://svc:80' }, { service: 'http_status:404' }];
    await cf.zeroTrust.tunnels.cloudflared.configurations.update(t.id!, { account_id: ACCOUNT, config: { ingress: ingress as any } });
    assert.deepEqual(emu.requests.at(-1)!.body, { config: { ingress } });
    const got = await cf.zeroTrust.tunnels.cloudflared.configurations.get(t.id!, { account_id: ACCOUNT });
    assert.deepEqual(got.config?.ingress, [
      { hostname: 'echo.example.org', service: 'http://svc:80', originRequest: {} },
      { service: 'http_status:404', originRequest: {} },
    ]);
    assert.equal(got.version, 1);
  });

  it('rejects ingress rules without a final hostname-less catch-all (1055)', async () => {
    const cf = sdk();
    const t = await cf.zeroTrust.tunnels.cloudflared.create({ account_id: ACCOUNT, name: 'homelab', config_src: 'cloudflare' });
    const put = (ingress: unknown[]) => cf.zeroTrust.tunnels.cloudflared.configurations.update(t.id!, { account_id: ACCOUNT, config: { ingress: ingress as any } });
    assert.deepEqual(await codeOf(put([{ hostname: 'echo.example.org', service: 'http://svc:80' }])), { status: 400, code: 1055 });
    assert.deepEqual(await codeOf(put([{ service: 'http_status:404' }, { hostname: 'echo.example.org', service: 'http://svc:80' }])), { status: 400, code: 1055 });
    assert.deepEqual(await codeOf(put([])), { status: 400, code: 1055 });
  });

  it('refuses to set the configuration of a locally-managed tunnel', async () => {
    const cf = sdk();
    const t = await cf.zeroTrust.tunnels.cloudflared.create({ account_id: ACCOUNT, name: 'local-one', config_src: 'local', tunnel_secret: Buffer.alloc(32, 7).toString('base64') });
    assert.deepEqual(
      await codeOf(cf.zeroTrust.tunnels.cloudflared.configurations.update(t.id!, { account_id: ACCOUNT, config: { ingress: [{ service: 'http_status:404' }] as any } })),
      { status: 400, code: 1055 },
    );
  });
});

describe('fault switches', () => {
  it('rateLimit: the next N calls get 429 with retry-after and are not carried out', async () => {
    emu.rateLimit(2, { retryAfterSeconds: 7 });
    for (let i = 0; i < 2; i++) {
      const r = await raw('POST', `/zones/${zoneId}/dns_records`, { type: 'A', name: 'a', content: '192.168.0.1', ttl: 1 });
      assert.equal(r.status, 429);
      assert.equal(r.headers.get('retry-after'), '7');
      assert.equal(r.json.errors[0].code, 971);
    }
    assert.equal(emu.records('example.org').length, 0);
    assert.equal((await raw('POST', `/zones/${zoneId}/dns_records`, { type: 'A', name: 'a', content: '192.168.0.1', ttl: 1 })).status, 200);
    assert.deepEqual(emu.requests.map((r) => r.status), [429, 429, 200]);
  });

  it('the account-wide limit (1,200 per 5 minutes on Cloudflare) answers 429 once exceeded', async () => {
    const limited = await CloudflareEmulator.start({ token: TOKEN, globalRateLimit: { requests: 3, windowMs: 60_000 } });
    try {
      const z = limited.addZone('example.org');
      const statuses: number[] = [];
      for (let i = 0; i < 4; i++) {
        const res = await fetch(`${limited.baseUrl}/zones/${z.id}`, { headers: { authorization: `Bearer ${TOKEN}` } });
        statuses.push(res.status);
        if (res.status === 429) assert.ok(Number(res.headers.get('retry-after')) > 0);
        await res.text();
      }
      assert.deepEqual(statuses, [200, 200, 200, 429]);
    } finally {
      await limited.stop();
    }
  });

  it('serverErrors: a burst of 5xx (502 as the edge\'s HTML page), nothing carried out', async () => {
    emu.serverErrors(1, { status: 500 });
    emu.serverErrors(1, { status: 502 });
    const a = await raw('POST', `/zones/${zoneId}/dns_records`, { type: 'A', name: 'a', content: '192.168.0.1', ttl: 1 });
    assert.equal(a.status, 500);
    assert.equal(a.json.success, false);
    const b = await raw('POST', `/zones/${zoneId}/dns_records`, { type: 'A', name: 'a', content: '192.168.0.1', ttl: 1 });
    assert.equal(b.status, 502);
    assert.match(b.text, /<html>/);
    assert.equal(emu.records('example.org').length, 0);
    assert.equal((await raw('GET', `/zones/${zoneId}`)).status, 200);
  });

  it('loseResponse (destroy): the create happens, the client sees a dropped connection', async () => {
    emu.loseResponse({ match: { method: 'POST' } });
    await assert.rejects(raw('POST', `/zones/${zoneId}/dns_records`, { type: 'A', name: 'a', content: '192.168.0.1', ttl: 1 }), /fetch failed|socket|closed/i);
    assert.equal(emu.records('example.org').length, 1);
    assert.equal(emu.requests.at(-1)!.status, 'lost');
    // Only the matching request was affected.
    assert.equal((await raw('GET', `/zones/${zoneId}`)).status, 200);
  });

  it('loseResponse (hang): the create happens, the client times out', async () => {
    emu.loseResponse({ mode: 'hang', match: { method: 'POST', path: /dns_records$/ } });
    await assert.rejects(
      fetch(`${emu.baseUrl}/zones/${zoneId}/dns_records`, {
        method: 'POST',
        headers: { authorization: `Bearer ${TOKEN}` },
        body: JSON.stringify({ type: 'A', name: 'a', content: '192.168.0.1', ttl: 1 }),
        signal: AbortSignal.timeout(300),
      }),
      /abort|timeout/i,
    );
    assert.equal(emu.records('example.org').length, 1);
    assert.equal(emu.requests.at(-1)!.status, 'hung');
  });

  it('slow: answers arrive after the delay', async () => {
    emu.slow(250, { times: 1 });
    const t0 = Date.now();
    assert.equal((await raw('GET', `/zones/${zoneId}`)).status, 200);
    assert.ok(Date.now() - t0 >= 240, `took ${Date.now() - t0} ms`);
    const t1 = Date.now();
    await raw('GET', `/zones/${zoneId}`);
    assert.ok(Date.now() - t1 < 200, 'only the next call was slow');
  });

  it('the request log keeps method, path and query; writes() counts POST/PUT/PATCH/DELETE', async () => {
    const cf = sdk();
    await cf.dns.records.list({ zone_id: zoneId, name: { exact: 'a.example.org' } });
    const r = await cf.dns.records.create(record());
    await cf.dns.records.delete(r.id, { zone_id: zoneId });
    assert.deepEqual(
      emu.requests.map((x) => [x.method, x.path, x.query]),
      [
        ['GET', `/zones/${zoneId}/dns_records`, { 'name.exact': 'a.example.org' }],
        ['POST', `/zones/${zoneId}/dns_records`, {}],
        ['DELETE', `/zones/${zoneId}/dns_records/${r.id}`, {}],
      ],
    );
    assert.equal(emu.writes().length, 2);
    assert.deepEqual(emu.countByMethod(), { GET: 1, POST: 1, DELETE: 1 });
  });
});

describe('standalone emulator', () => {
  it('prints its base URL, serves the API, exposes the log under /__emulator/, stops on SIGTERM', async () => {
    const main = fileURLToPath(new URL('../rig/cloudflare-emulator-main.ts', import.meta.url));
    const child = spawn(process.execPath, [main, '--port', '0', '--token', TOKEN, '--zone', `example.org=${'a'.repeat(32)}`, '--account-id', ACCOUNT], { stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      const first = await new Promise<string>((resolve, reject) => {
        createInterface({ input: child.stdout! }).once('line', resolve);
        child.once('exit', (code) => reject(new Error(`emulator exited with ${code}`)));
      });
      assert.match(first, /^http:\/\/127\.0\.0\.1:\d+\/client\/v4$/);
      const zones = await new Cloudflare({ apiToken: TOKEN, baseURL: first, maxRetries: 0, logLevel: 'off' }).zones.list({ name: 'example.org' });
      assert.equal(zones.result[0]?.id, 'a'.repeat(32));
      const log = (await (await fetch(new URL('/__emulator/requests', first))).json()) as any;
      assert.equal(log.requests.length, 1);
      assert.equal(log.writes, 0);
    } finally {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
  });
});

// Holds the Cloudflare emulator to Cloudflare's published OpenAPI schema
// (../shared/cloudflare/openapi-subset.json): every request is matched to its operation and
// its path, query and body are checked; every JSON response is checked against what the
// operation declares for its status. ajv does the checking (OpenAPI 3.0 schema objects are
// JSON Schema draft-07 plus `nullable`, which ajv understands natively); this file only finds
// the schema to check against and applies the documented differences between the 2024 schema
// and today's API (../shared/cloudflare/README.md):
//   1. `name.exact` & co. on the DNS record list are declared as the plain `name` filter;
//   2. a tunnel ingress rule needs no `hostname` (the last rule must be the catch-all without
//      one: the emulator refuses anything else with Cloudflare's own answer, 1055);
//   3. DNS record bodies of POST and PUT require only `type`, `name`, `content` and `ttl` (the
//      schema reuses the response shape, with its read-only fields, as the request body, and
//      lists no `ttl` there); PATCH requires none.
// And two more. Production answers the configuration of a tunnel never configured with
// `result: null`, which the schema's `result: {type: object}` does not allow (issue 13).
// The schema itself forces the other: its 4XX answers are `allOf` the success envelope
// (`success: true`) and the failure envelope (`success: false`), which no answer can satisfy;
// error answers are checked against the failure envelope alone.
// Loaded only by the emulator when validation is on: the emulator itself needs no package.
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import addFormatsModule from 'ajv-formats';

const addFormats = ((addFormatsModule as unknown as { default?: unknown }).default ?? addFormatsModule) as (ajv: Ajv) => Ajv;

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** `../shared` beside the repository (or HB_SHARED_DIR), where the real schema lives. */
export const sharedDir = process.env.HB_SHARED_DIR ?? resolve(repoRoot, '..', 'shared');
export const DEFAULT_SCHEMA_FILE = resolve(sharedDir, 'cloudflare', 'openapi-subset.json');

type Json = Record<string, any>;

const DOC_ID = 'https://schema.invalid/cloudflare.json';
const REQ_ID = 'https://schema.invalid/cloudflare-request.json';
const PATCH_ID = 'https://schema.invalid/cloudflare-patch.json';
const DNS_NAME_FILTER = /^name\.(exact|contains|startswith|endswith)$/;

interface Operation {
  method: string;
  template: string;
  regex: RegExp;
  params: string[];
  pointer: string; // JSON pointer of the operation object
  op: Json;
}

const escapePointer = (s: string): string => encodeURIComponent(s.replace(/~/g, '~0').replace(/\//g, '~1'));

function errorsText(errors: ErrorObject[] | null | undefined): string {
  // oneOf/anyOf report every branch: keep the errors of the deepest path, the ones that say what is wrong.
  const list = errors ?? [];
  const depth = Math.max(0, ...list.map((e) => e.instancePath.length));
  const deepest = list.filter((e) => e.instancePath.length === depth);
  const seen = new Set<string>();
  for (const e of deepest) seen.add(`${e.instancePath || '/'} ${e.message ?? e.keyword}${e.params && 'allowedValues' in e.params ? ` ${JSON.stringify(e.params.allowedValues)}` : ''}${e.params && 'additionalProperty' in e.params ? ` (${e.params.additionalProperty})` : ''}`);
  return [...seen].slice(0, 5).join('; ');
}

/** Request view of the schema: the documented request-side overrides applied to a copy. */
function requestView(doc: Json, id: string, recordRequired: readonly string[]): Json {
  const copy = structuredClone(doc) as Json;
  copy.$id = id;
  const schemas = copy.components.schemas as Record<string, Json>;
  // Override 3: the record union's own `required` lists read-only fields; each type's schema
  // keeps only type/name/content of its own list, plus ttl, which the API requires though the
  // schema's lists leave it out (none for PATCH, which is why PATCH also matches any branch).
  delete schemas['dns-records_dns-record']!.required;
  if (recordRequired.length === 0) {
    schemas['dns-records_dns-record']!.anyOf = schemas['dns-records_dns-record']!.oneOf;
    delete schemas['dns-records_dns-record']!.oneOf;
  }
  for (const [name, s] of Object.entries(schemas)) {
    if (/^dns-records_[A-Z]+Record$/.test(name) && Array.isArray(s.required)) s.required = recordRequired.filter((r) => r === 'ttl' || s.required.includes(r));
  }
  // Override 2: hostname is optional (the catch-all has none); the order rule is checked in code.
  const rule = schemas.tunnel_ingressRule!;
  rule.required = (rule.required as string[]).filter((r) => r !== 'hostname');
  return copy;
}

export class CloudflareSchema {
  readonly file: string;
  readonly #ajv: Ajv;
  readonly #params: Ajv;
  readonly #ops: Operation[] = [];
  readonly #cache = new Map<string, ValidateFunction>();

  constructor(file: string = DEFAULT_SCHEMA_FILE) {
    this.file = file;
    let doc: Json;
    try {
      doc = JSON.parse(readFileSync(file, 'utf8')) as Json;
    } catch (e) {
      throw new Error(`Cloudflare OpenAPI schema ${file} could not be read (${(e as Error).message}); set HB_SHARED_DIR to the folder holding cloudflare/openapi-subset.json`);
    }
    // OpenAPI 3.0 schema objects: draft-07 keywords plus nullable (native in ajv) and
    // annotations ajv does not know (example, xml, ...), hence strict off.
    const opts = { strict: false, allErrors: true, validateSchema: false, discriminator: true } as const;
    this.#ajv = addFormats(new Ajv(opts));
    // Query and path parameters arrive as text: coerce them to the declared type before checking.
    this.#params = addFormats(new Ajv({ ...opts, coerceTypes: true }));
    for (const ajv of [this.#ajv, this.#params]) {
      ajv.addSchema({ ...doc, $id: DOC_ID });
      ajv.addSchema(requestView(doc, REQ_ID, ['type', 'name', 'content', 'ttl']));
      ajv.addSchema(requestView(doc, PATCH_ID, []));
    }
    for (const [template, item] of Object.entries(doc.paths as Record<string, Json>)) {
      const params: string[] = [];
      const regex = new RegExp(
        '^' +
          template.replace(/\{([^}]+)\}|[^{]+/g, (m, p: string | undefined) => {
            if (p === undefined) return m.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
            params.push(p);
            return '([^/]+)';
          }) +
          '$',
      );
      for (const [method, op] of Object.entries(item)) {
        this.#ops.push({ method: method.toUpperCase(), template, regex, params, pointer: `/paths/${escapePointer(template)}/${method}`, op: op as Json });
      }
    }
    // Literal segments win over parameters (`/dns_records/export` before `/dns_records/{id}`).
    this.#ops.sort((a, b) => a.params.length - b.params.length);
  }

  #validator(ajv: Ajv, base: string, pointer: string, wrap?: 'value'): ValidateFunction {
    const key = `${ajv === this.#params ? 'p' : 'b'} ${base} ${pointer}`;
    let v = this.#cache.get(key);
    if (!v) {
      const ref = { $ref: `${base}#${pointer}` };
      v = ajv.compile(wrap ? { type: 'object', properties: { value: ref } } : ref);
      this.#cache.set(key, v);
    }
    return v;
  }

  #find(method: string, path: string): { o: Operation; values: string[] } | undefined {
    for (const o of this.#ops) {
      if (o.method !== method) continue;
      const m = o.regex.exec(path);
      if (m) return { o, values: m.slice(1).map(decodeURIComponent) };
    }
    return undefined;
  }

  /** Whether the schema declares this operation at all. */
  declares(method: string, path: string): boolean {
    return this.#find(method, path) !== undefined;
  }

  /** Problems with a request, empty when the schema accepts it. `path` is below the API root. */
  checkRequest(req: { method: string; path: string; query: Record<string, string>; body: unknown }): string[] {
    const found = this.#find(req.method, req.path);
    if (!found) return [`${req.method} ${req.path}: no such operation in the schema`];
    const { o, values } = found;
    const problems: string[] = [];
    const declared = (o.op.parameters ?? []) as Json[];
    const paramPointer = (p: Json) => `${o.pointer}/parameters/${declared.indexOf(p)}/schema`;
    const check = (p: Json, value: string, label: string) => {
      const v = this.#validator(this.#params, DOC_ID, paramPointer(p), 'value');
      if (!v({ value })) problems.push(`${label}=${JSON.stringify(value)}: ${errorsText(v.errors)}`);
    };
    o.params.forEach((name, i) => {
      const p = declared.find((d) => d.in === 'path' && d.name === name);
      if (p) check(p, values[i]!, `path parameter ${name}`);
    });
    for (const [key, value] of Object.entries(req.query)) {
      let p = declared.find((d) => d.in === 'query' && d.name === key);
      // Override 1: name.exact & co. are newer than the schema's plain `name`.
      if (!p && o.template === '/zones/{zone_id}/dns_records' && DNS_NAME_FILTER.test(key)) p = declared.find((d) => d.in === 'query' && d.name === 'name');
      if (!p) problems.push(`query parameter ${key} is not declared`);
      else check(p, value, `query parameter ${key}`);
    }
    const body = o.op.requestBody as Json | undefined;
    if (body) {
      // A DELETE is sent without a body (the SDK, Cloudflare's own curl examples), though the schema declares `{}`.
      if (req.body === undefined && req.method !== 'DELETE') {
        if (body.required) problems.push('the request body is required');
      } else if (req.body !== undefined) {
        const isRecordWrite = o.template.startsWith('/zones/{zone_id}/dns_records');
        const base = req.method === 'PATCH' && isRecordWrite ? PATCH_ID : REQ_ID;
        const v = this.#validator(this.#ajv, base, `${o.pointer}/requestBody/content/application~1json/schema`);
        if (!v(req.body)) problems.push(`body: ${errorsText(v.errors)}`);
      }
    } else if (req.body !== undefined) {
      problems.push('a body was sent to an operation that takes none');
    }
    return problems.map((p) => `${req.method} ${o.template}: ${p}`);
  }

  /** Problems with a JSON answer, empty when the schema accepts it. Undeclared statuses (5xx) are not checked. */
  checkResponse(res: { method: string; path: string; status: number; body: unknown }): string[] {
    const found = this.#find(res.method, res.path);
    if (!found) return [];
    const { o } = found;
    const responses = (o.op.responses ?? {}) as Json;
    // Range keys come as 4XX and as 4xx.
    const key = [String(res.status), `${String(res.status)[0]}XX`, `${String(res.status)[0]}xx`, 'default'].find((k) => responses[k]);
    if (!key) return res.status < 500 ? [`${res.method} ${o.template}: HTTP ${res.status} is not a declared answer`] : [];
    let pointer = `${o.pointer}/responses/${key}/content/application~1json/schema`;
    const schema = responses[key]?.content?.['application/json']?.schema as Json | undefined;
    if (!schema) return [];
    if (res.status >= 400 && Array.isArray(schema.allOf)) {
      const i = (schema.allOf as Json[]).findIndex((s) => typeof s.$ref === 'string' && s.$ref.endsWith('api-response-common-failure'));
      if (i >= 0) pointer += `/allOf/${i}`;
    }
    let body = res.body;
    if (res.status === 200 && res.method === 'GET' && o.template.endsWith('/configurations') && (body as Json | null)?.result === null) body = { ...(body as Json), result: {} };
    const v = this.#validator(this.#ajv, DOC_ID, pointer);
    return v(body) ? [] : [`${res.method} ${o.template} → ${res.status}: ${errorsText(v.errors)}`];
  }
}

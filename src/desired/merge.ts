// User overrides over generated Helm values, with the rules people know from Helm's own
// `-f a.yaml -f b.yaml` coalescing: objects merge key by key, arrays and scalars replace, and
// `null` deletes a key (so an override can drop a generated setting, not only change it).

export type JsonObject = Record<string, unknown>;

export function isPlainObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

// A JSON settings file may carry a "__proto__" key; plain assignment would set the prototype.
function put(out: JsonObject, key: string, value: unknown): void {
  Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
}

/** A new object: `override` deep-merged over `base`. Neither input is modified. */
export function deepMerge(base: JsonObject, override: JsonObject): JsonObject {
  const out: JsonObject = {};
  for (const [k, v] of Object.entries(base)) put(out, k, v);
  for (const [k, v] of Object.entries(override)) {
    if (v === null) {
      delete out[k];
    } else if (isPlainObject(v)) {
      const prev = Object.hasOwn(out, k) ? out[k] : undefined;
      // Merging into {} when base has no object there still strips nested nulls.
      put(out, k, deepMerge(isPlainObject(prev) ? prev : {}, v));
    } else {
      put(out, k, v);
    }
  }
  return out;
}

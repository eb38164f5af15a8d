/** Lowercase FQDN without trailing dot for a host name that is a label under `domain` or a full name inside it. */
export function fqdn(name: string, domain: string): string {
  const n = name.toLowerCase().replace(/\.$/, '');
  const d = domain.toLowerCase().replace(/\.$/, '');
  if (n === d || n.endsWith(`.${d}`)) return n;
  if (n.includes('.')) throw new Error(`expected a label ("sonarr") or a name ending in .${d}`);
  return `${n}.${d}`;
}

/**
 * A host's FQDN: `name` is a label under its base (the host's `zone`, else `domain`), "@" for the
 * base itself (the zone apex), or a full name inside the base.
 */
export function hostFqdn(host: { name: string; zone?: string | undefined }, domain: string): string {
  const base = host.zone ?? domain;
  return host.name === '@' ? fqdn(base, base) : fqdn(host.name, base);
}

export function ipToInt(ip: string): number {
  return ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
}

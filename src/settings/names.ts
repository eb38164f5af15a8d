/** Lowercase FQDN without trailing dot for a host name that is a label under `domain` or a full name inside it. */
export function fqdn(name: string, domain: string): string {
  const n = name.toLowerCase().replace(/\.$/, '');
  const d = domain.toLowerCase().replace(/\.$/, '');
  if (n === d || n.endsWith(`.${d}`)) return n;
  if (n.includes('.')) throw new Error(`expected a label ("sonarr") or a name ending in .${d}`);
  return `${n}.${d}`;
}

export function ipToInt(ip: string): number {
  return ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
}

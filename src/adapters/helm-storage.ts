// Reads a release the way helm itself stores it (its default Secrets driver), with the
// Kubernetes client the daemon already has, so deciding "nothing to do" starts no helm process
// (Flux's helm-controller reads Helm storage the same way). helm stays the only writer.
//
// One Secret per revision, in the release's namespace: type helm.sh/release.v1, labels
// owner=helm, name=<release>, version=<revision>, status=<status>; data.release is
// base64(gzip(JSON)) (the API base64s it once more). Helm 3 and Helm 4 both write this format.
// The history is listed as metadata alone, and a record is read and decoded only when the memo
// (release-memo.ts) does not already know what that exact Secret says.
import { gunzipSync } from 'node:zlib';
import type { KubeClient } from './kube.ts';
import type { KubeObject } from '../steps/types.ts';
import type { ChartMeta } from './chart-meta.ts';
import { TransientError } from '../engine/errors.ts';
import { memoryReleaseMemo, valuesDigest, type ReleaseMemo, type ReleaseSummary } from './release-memo.ts';

export const HELM_RELEASE_TYPE = 'helm.sh/release.v1';

/** One revision as helm stored it: what the planner compares, nothing of the manifest. */
export interface ReleaseRecord {
  name: string;
  namespace: string;
  revision: number;
  status: string;
  description: string;
  chart: ChartMeta;
  /** The user-supplied values (`helm get values`); {} when there are none. */
  values: Record<string, unknown>;
}

/** A revision's Secret, read and decoded only when asked for (a big chart's record is megabytes). */
export interface StoredRevision {
  revision: number;
  /** The status label; helm keeps it in step with the record's own info.status. */
  status: string;
  /** What this very Secret (uid and resourceVersion) decoded to on an earlier run, if remembered. */
  remembered(): ReleaseSummary | undefined;
  /** Reads the Secret and decodes it (once), and remembers what it says. */
  decode(): Promise<ReleaseRecord>;
}

export class ReleaseDecodeError extends Error {
  override name = 'ReleaseDecodeError';
}

const GZIP_MAGIC = [0x1f, 0x8b];

/** Decodes one release Secret as helm's storage driver does (gzip is optional there too). */
export function decodeReleaseSecret(secret: KubeObject): ReleaseRecord {
  const ref = `Secret ${secret.metadata.namespace}/${secret.metadata.name}`;
  const data = (secret as { data?: Record<string, string> }).data?.release;
  if (typeof data !== 'string') throw new ReleaseDecodeError(`${ref} has no data.release; it is not a Helm release record`);
  let json: string;
  try {
    const raw = Buffer.from(Buffer.from(data, 'base64').toString('latin1'), 'base64');
    json = (raw[0] === GZIP_MAGIC[0] && raw[1] === GZIP_MAGIC[1] ? gunzipSync(raw) : raw).toString('utf8');
  } catch (e) {
    throw new ReleaseDecodeError(`${ref}: the Helm release record cannot be decoded (${(e as Error).message})`);
  }
  let r: {
    name?: string;
    namespace?: string;
    version?: number;
    info?: { status?: string; description?: string };
    chart?: { metadata?: { name?: string; version?: string } };
    config?: Record<string, unknown> | null;
  };
  try {
    r = JSON.parse(json) as typeof r;
  } catch {
    throw new ReleaseDecodeError(`${ref}: the Helm release record is not JSON`);
  }
  return {
    name: String(r.name ?? secret.metadata.labels?.name ?? ''),
    namespace: String(r.namespace ?? secret.metadata.namespace ?? ''),
    revision: Number(r.version ?? secret.metadata.labels?.version),
    status: String(r.info?.status ?? secret.metadata.labels?.status ?? ''),
    description: String(r.info?.description ?? ''),
    chart: { name: String(r.chart?.metadata?.name ?? ''), version: String(r.chart?.metadata?.version ?? '') },
    values: r.config && typeof r.config === 'object' && !Array.isArray(r.config) ? r.config : {},
  };
}

/**
 * Every stored revision of a release, newest first: one label-selected list of metadata in its
 * namespace. [] when there is none (or the namespace does not exist yet).
 */
export async function readReleaseHistory(kube: KubeClient, name: string, namespace: string, memo: ReleaseMemo = memoryReleaseMemo()): Promise<StoredRevision[]> {
  const secrets = await kube.list('v1', 'Secret', { namespace, labelSelector: `owner=helm,name=${name}`, metadataOnly: true });
  return secrets
    .filter((s) => Number.isInteger(Number(s.metadata.labels?.version)))
    .map((s) => {
      const { uid, resourceVersion } = s.metadata as { uid?: string; resourceVersion?: string };
      let decoded: Promise<ReleaseRecord> | undefined;
      return {
        revision: Number(s.metadata.labels!.version),
        status: s.metadata.labels?.status ?? '',
        remembered: () => (uid && resourceVersion ? memo.get({ uid, resourceVersion }) : undefined),
        decode: () => (decoded ??= readRecord(kube, s.metadata.name, namespace, memo)),
      };
    })
    .sort((a, b) => b.revision - a.revision);
}

async function readRecord(kube: KubeClient, secretName: string, namespace: string, memo: ReleaseMemo): Promise<ReleaseRecord> {
  const secret = await kube.get('v1', 'Secret', secretName, namespace);
  // helm prunes old revisions (--history-max) and uninstall deletes them all.
  if (!secret) throw new TransientError(`Secret ${namespace}/${secretName}: Helm's record was deleted while being read`);
  const type = (secret as { type?: string }).type;
  if (type !== HELM_RELEASE_TYPE) {
    throw new ReleaseDecodeError(`Secret ${namespace}/${secretName} is labelled as a Helm release record (owner=helm) but has type ${type ?? '(none)'}, not ${HELM_RELEASE_TYPE}; remove the label or the Secret`);
  }
  const record = decodeReleaseSecret(secret);
  const { uid, resourceVersion } = secret.metadata as { uid?: string; resourceVersion?: string };
  if (uid && resourceVersion) memo.put({ uid, resourceVersion }, { revision: record.revision, status: record.status, chart: record.chart, valuesDigest: valuesDigest(record.values) });
  return record;
}

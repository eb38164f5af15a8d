// Counts what a test user did to the apiserver, from the apiserver's own audit log. The log is
// written after the response is sent, so both ends of a window are fenced by a barrier request
// (made as the rig user) that has to show up in the log first.
import { randomBytes } from 'node:crypto';
import { openSync, readSync, closeSync, fstatSync } from 'node:fs';
import type { ControlPlane } from './control-plane.ts';
import { kubeRequest } from './kube-http.ts';

export type AuditTarget = Pick<ControlPlane, 'auditLogPath' | 'rig' | 'user'>;

export interface AuditEvent {
  auditID: string;
  stage: string;
  verb: string;
  requestURI: string;
  user: { username: string; groups?: string[] };
  userAgent?: string;
  objectRef?: { resource?: string; subresource?: string; namespace?: string; name?: string; apiGroup?: string; apiVersion?: string };
  responseStatus?: { code?: number };
}

/** A byte offset in the audit log; every request completed before the mark was taken lies before it. */
export interface AuditMark {
  offset: number;
}

export interface RequestCounts {
  reads: number;
  writes: number;
  /** Verbs that are neither, e.g. `post` on a non-resource URL. */
  other: number;
  byVerb: Record<string, number>;
  /** Keyed `verb resource[/subresource]`, or `verb /path` for non-resource URLs such as /readyz. */
  byResource: Record<string, number>;
  events: AuditEvent[];
}

const READS = new Set(['get', 'list', 'watch']);
const WRITES = new Set(['create', 'update', 'patch', 'delete', 'deletecollection']);
// A watch still open when counting has only its ResponseStarted event; dedup by auditID covers both.
const COUNTED_STAGES = new Set(['ResponseStarted', 'ResponseComplete', 'Panic']);

export async function auditMark(cp: AuditTarget): Promise<AuditMark> {
  return { offset: await barrier(cp, 0) };
}

export async function countRequests(cp: AuditTarget, opts: { since: AuditMark; user?: string }): Promise<RequestCounts> {
  const until = await barrier(cp, opts.since.offset);
  const user = opts.user ?? cp.user;
  const seen = new Set<string>();
  const counts: RequestCounts = { reads: 0, writes: 0, other: 0, byVerb: {}, byResource: {}, events: [] };
  for (const ev of readEvents(cp.auditLogPath, opts.since.offset, until)) {
    if (ev.user?.username !== user || !COUNTED_STAGES.has(ev.stage) || seen.has(ev.auditID)) continue;
    seen.add(ev.auditID);
    counts.events.push(ev);
    if (READS.has(ev.verb)) counts.reads++;
    else if (WRITES.has(ev.verb)) counts.writes++;
    else counts.other++;
    counts.byVerb[ev.verb] = (counts.byVerb[ev.verb] ?? 0) + 1;
    const key = `${ev.verb} ${resourceOf(ev)}`;
    counts.byResource[key] = (counts.byResource[key] ?? 0) + 1;
  }
  return counts;
}

function resourceOf(ev: AuditEvent): string {
  const ref = ev.objectRef;
  if (ref?.resource) return ref.subresource ? `${ref.resource}/${ref.subresource}` : ref.resource;
  return ev.requestURI.split('?')[0] ?? ev.requestURI;
}

/** Events whose line lies in [from, to); a line still being written is left out. */
export function readEvents(path: string, from: number, to?: number): AuditEvent[] {
  const text = readRange(path, from, to);
  const end = text.lastIndexOf('\n');
  if (end < 0) return [];
  return text
    .slice(0, end)
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as AuditEvent);
}

/** Makes a request only the rig makes, waits until its event is in the log, and returns the offset just past it. */
async function barrier(cp: AuditTarget, from: number, timeoutMs = 10_000): Promise<number> {
  const name = `rig-audit-barrier-${randomBytes(6).toString('hex')}`;
  const res = await kubeRequest(cp.rig, 'GET', `/api/v1/namespaces/default/configmaps/${name}`);
  if (res.status !== 404) throw new Error(`audit barrier: expected 404, got HTTP ${res.status}: ${res.body.slice(0, 200)}`);
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const text = readRange(cp.auditLogPath, from);
    const at = text.indexOf(`/configmaps/${name}`);
    if (at >= 0) {
      const nl = text.indexOf('\n', at);
      if (nl >= 0) return from + Buffer.byteLength(text.slice(0, nl + 1));
    }
    if (performance.now() > deadline) throw new Error(`audit barrier ${name} did not reach ${cp.auditLogPath} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function readRange(path: string, from: number, to?: number): string {
  const fd = openSync(path, 'r');
  try {
    const end = to ?? fstatSync(fd).size;
    if (end <= from) return '';
    const buf = Buffer.alloc(end - from);
    let got = 0;
    while (got < buf.length) {
      const n = readSync(fd, buf, got, buf.length - got, from + got);
      if (n === 0) break;
      got += n;
    }
    return buf.subarray(0, got).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

// Thin adapter over @kubernetes/client-node. Stub with the agreed surface: the cluster-steps
// work implements it (every write is server-side apply with field manager FIELD_MANAGER).
import type { Logger } from 'pino';
import type { KubeObject } from '../steps/types.ts';

export const FIELD_MANAGER = 'homelab-bootstrap';
export const OWNER_LABEL = { 'app.kubernetes.io/managed-by': 'homelab-bootstrap' } as const;

export interface ApplyOptions {
  dryRun?: boolean;
  force?: boolean; // take over fields another manager owns
}

export class KubeClient {
  readonly kubeconfigPath: string;
  readonly log: Logger;
  constructor(kubeconfigPath: string, log: Logger) {
    this.kubeconfigPath = kubeconfigPath;
    this.log = log;
  }
  /** GET /readyz; false while the apiserver is starting or unreachable. */
  async readyz(_signal?: AbortSignal): Promise<boolean> {
    throw new Error('not implemented');
  }
  async get(_apiVersion: string, _kind: string, _name: string, _namespace?: string): Promise<KubeObject | undefined> {
    throw new Error('not implemented');
  }
  async list(_apiVersion: string, _kind: string, _opts?: { namespace?: string; labelSelector?: string }): Promise<KubeObject[]> {
    throw new Error('not implemented');
  }
  /** Server-side apply. */
  async apply(_obj: KubeObject, _opts?: ApplyOptions): Promise<KubeObject> {
    throw new Error('not implemented');
  }
  async delete(_apiVersion: string, _kind: string, _name: string, _namespace?: string): Promise<void> {
    throw new Error('not implemented');
  }
}

// Thin adapter over the real `helm` binary via execa. (Stub: the cluster-steps work fills it in.)
import type { Logger } from 'pino';

export class Helm {
  readonly kubeconfigPath: string;
  readonly log: Logger;
  constructor(kubeconfigPath: string, log: Logger) {
    this.kubeconfigPath = kubeconfigPath;
    this.log = log;
  }
}

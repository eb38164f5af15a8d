// The pure parts of the Helm steps: planning, the Cilium upgrade guard, reading Helm's release
// records and a chart's Chart.yaml without helm, and which helm failures are transient.
import { describe, it } from 'node:test';
import { execFileSync } from 'node:child_process';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { gzipSync } from 'node:zlib';
import { repoRoot } from '../rig/binaries.ts';
import { planRelease, type ReleaseHave, type ReleaseWant } from '../../src/steps/helm-release.ts';
import { ciliumUpgradeRefusal } from '../../src/steps/cilium.ts';
import { chartYamlFromTgz, ChartReadError, readChartMeta } from '../../src/adapters/chart-meta.ts';
import { decodeReleaseSecret } from '../../src/adapters/helm-storage.ts';
import { applyConflicts, isTransientHelmError, manifestObjects, ownershipConflict } from '../../src/adapters/helm.ts';
import { isTransient, isTransientMessage, TransientError } from '../../src/engine/errors.ts';

const sharedCharts = resolve(process.env.HB_SHARED_DIR ?? resolve(repoRoot, '..', 'shared'), 'charts');
const cilium = (version: string) => ({ name: 'cilium', version });

describe('planRelease', () => {
  const want: ReleaseWant = {
    release: { name: 'cilium', namespace: 'kube-system', chart: { path: '/charts/cilium' }, values: { a: { b: 1 } } },
    rollout: [],
  };
  const chart = cilium('1.18.4');
  const deployed = (over: object = {}) => ({ revision: 3, status: 'deployed', chart, values: { a: { b: 1 } }, ...over });

  it('installs when there is no release', () => {
    const ops = planRelease(want, { chart, workloads: [] });
    assert.deepEqual(ops.map((o) => o.op.kind), ['install']);
    assert.equal(ops[0]!.change.action, 'create');
  });

  it('does nothing when chart and values match a deployed release', () => {
    assert.deepEqual(planRelease(want, { chart, workloads: [], deployed: deployed() }), []);
  });

  it('upgrades a failed release even when chart and values match', () => {
    const ops = planRelease(want, { chart, workloads: [], deployed: deployed({ status: 'failed' }) });
    assert.deepEqual(ops.map((o) => o.op.kind), ['upgrade']);
    assert.match(ops[0]!.change.detail ?? '', /revision 3 is failed/);
  });

  it('a chart version change is a $.chart diff', () => {
    const have: ReleaseHave = { chart, workloads: [], deployed: deployed({ revision: 1, chart: cilium('1.18.3') }) };
    assert.deepEqual(planRelease(want, have)[0]!.change.diff, [{ path: '$.chart', from: 'cilium-1.18.3', to: 'cilium-1.18.4' }]);
  });

  it('pending-rollback: roll back again, then upgrade if the values differ', () => {
    const have: ReleaseHave = {
      chart,
      workloads: [],
      recovery: { kind: 'rollback', status: 'pending-rollback', revision: 5, toRevision: 3 },
      deployed: deployed({ revision: 6, values: { a: { b: 2 } } }),
    };
    const ops = planRelease(want, have);
    assert.deepEqual(ops.map((o) => o.op.kind), ['rollback', 'upgrade']);
    assert.match(ops[0]!.change.detail ?? '', /pending-rollback.*revision 3/);
  });

  it('uninstalling (a killed uninstall): uninstall again, then install', () => {
    const have: ReleaseHave = { chart, workloads: [], recovery: { kind: 'uninstall', status: 'uninstalling', revision: 2 } };
    const ops = planRelease(want, have);
    assert.deepEqual(ops.map((o) => [o.op.kind, o.change.action]), [['uninstall', 'delete'], ['install', 'create']]);
  });

  it('waits after a write even if the workloads looked ready, and only for unready ones otherwise', () => {
    const ref = { kind: 'DaemonSet' as const, name: 'cilium', namespace: 'kube-system' };
    const w = { ...want, rollout: [ref] };
    const ready = [{ ref, readiness: { ready: true, summary: 'ready' } }];
    const notReady = [{ ref, readiness: { ready: false, summary: '0 of 1 available' } }];
    assert.deepEqual(planRelease(w, { chart, workloads: ready }).map((o) => o.op.kind), ['install', 'wait']);
    assert.deepEqual(planRelease(w, { chart, workloads: ready, deployed: deployed() }), []);
    const ops = planRelease(w, { chart, workloads: notReady, deployed: deployed() });
    assert.deepEqual(ops.map((o) => [o.op.kind, o.change.action, o.change.target]), [['wait', 'wait', 'DaemonSet kube-system/cilium']]);
  });

  it('an upgrade the guard refuses is a conflict with its reason, and nothing is upgraded', () => {
    const have: ReleaseHave = { chart: cilium('1.20.0'), workloads: [], deployed: deployed({ values: { a: { b: 2 } } }) };
    const ops = planRelease(want, have, ciliumUpgradeRefusal);
    assert.deepEqual(ops.map((o) => [o.op.kind, o.change.action]), [['refuse', 'conflict']]);
    assert.match(ops[0]!.change.detail ?? '', /pin cilium\.chart\.version \(or cilium\.chart\.path\) to 1\.19\.x first/);
    assert.deepEqual(ops[0]!.change.diff?.[0], { path: '$.chart', from: 'cilium-1.18.4', to: 'cilium-1.20.0' });
    // The guard only speaks when something would be written.
    assert.deepEqual(planRelease(want, { chart, workloads: [], deployed: deployed() }, () => 'never'), []);
  });
});

describe('ciliumUpgradeRefusal', () => {
  const ok = (from: string, to: string) => assert.equal(ciliumUpgradeRefusal(cilium(from), cilium(to)), undefined, `${from} -> ${to}`);
  it('allows patch moves either way and one minor up', () => {
    ok('1.18.4', '1.18.4');
    ok('1.18.4', '1.18.6');
    ok('1.18.6', '1.18.4');
    ok('1.18.4', '1.19.6');
    ok('v1.19.6', '1.20.0');
    ok('1.19.0-pre.1', '1.20.0');
  });
  it('refuses a skipped minor with the version to pin first', () => {
    const why = ciliumUpgradeRefusal(cilium('1.18.4'), cilium('1.20.0'));
    assert.match(why ?? '', /^refusing to upgrade Cilium from 1\.18\.4 to 1\.20\.0: Cilium upgrades one minor version at a time; pin cilium\.chart\.version \(or cilium\.chart\.path\) to 1\.19\.x first/);
    assert.match(ciliumUpgradeRefusal(cilium('1.16.1'), cilium('1.20.0')) ?? '', /to 1\.17\.x first/);
  });
  it('refuses an older minor', () => {
    assert.match(ciliumUpgradeRefusal(cilium('1.19.6'), cilium('1.18.4')) ?? '', /1\.18\.4 is an older minor version.*keep cilium\.chart at 1\.19\.x or newer/);
  });
  it('says nothing about versions it cannot read or charts that are not Cilium', () => {
    assert.equal(ciliumUpgradeRefusal(cilium('latest'), cilium('1.20.0')), undefined);
    assert.equal(ciliumUpgradeRefusal({ name: 'other', version: '1.1.0' }, cilium('1.20.0')), undefined);
  });
});

describe('readChartMeta: Chart.yaml without helm', () => {
  it('reads the real packaged charts (.tgz as published)', () => {
    assert.deepEqual(readChartMeta(join(sharedCharts, 'cilium-1.18.4.tgz')), cilium('1.18.4'));
    assert.deepEqual(readChartMeta(join(sharedCharts, 'cilium-1.20.0.tgz')), cilium('1.20.0'));
    // argo-cd bundles redis-ha under charts/: the top-level Chart.yaml is the one that counts.
    assert.deepEqual(readChartMeta(join(sharedCharts, 'argo-cd-10.1.1.tgz')), { name: 'argo-cd', version: '10.1.1' });
  });

  it('reads a chart directory', () => {
    assert.deepEqual(readChartMeta(join(repoRoot, 'test', 'fixtures', 'charts', 'cilium')), cilium('1.18.4'));
  });

  it('refuses a Chart.yaml that is a FIFO or larger than 1 MiB, naming the file, without hanging', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hb-chart-meta-'));
    try {
      execFileSync('mkfifo', [join(dir, 'Chart.yaml')]);
      assert.throws(() => readChartMeta(dir), (e: Error) => e instanceof ChartReadError && e.message.includes(join(dir, 'Chart.yaml')) && /named pipe/.test(e.message));
      rmSync(join(dir, 'Chart.yaml'));
      writeFileSync(join(dir, 'Chart.yaml'), `name: x\nversion: 1.0.0\n# ${'x'.repeat(1024 * 1024)}\n`);
      assert.throws(() => readChartMeta(dir), (e: Error) => e instanceof ChartReadError && /larger than/.test(e.message));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('follows PAX and GNU long names, and skips nested charts', () => {
    const entry = (name: string, body: string, type = '0') => {
      const h = Buffer.alloc(512);
      h.write(name.slice(0, 100), 0);
      h.write('0000644\0', 100);
      h.write(`${Buffer.byteLength(body).toString(8).padStart(11, '0')}\0`, 124);
      h.write(type, 156);
      h.write('ustar\0', 257);
      const data = Buffer.alloc(Math.ceil(Buffer.byteLength(body) / 512) * 512);
      data.write(body);
      return Buffer.concat([h, data]);
    };
    const long = `${'x'.repeat(120)}/Chart.yaml`;
    const pax = `path=${long}\n`;
    // "<length> path=...\n", the length counting its own digits.
    let n = pax.length + 2;
    while (String(n).length + 1 + pax.length !== n) n = String(n).length + 1 + pax.length;
    const paxRecord = `${n} ${pax}`;
    const tar = Buffer.concat([
      entry('top/charts/sub/Chart.yaml', 'name: sub\nversion: 9.9.9\n'),
      entry('././@PaxHeader', paxRecord, 'x'),
      entry('truncated-name', 'name: long\nversion: 1.2.3\n'),
      Buffer.alloc(1024),
    ]);
    assert.equal(chartYamlFromTgz(gzipSync(tar), 'test.tgz'), 'name: long\nversion: 1.2.3\n');
    const gnu = Buffer.concat([entry('././@LongLink', `${long}\0`, 'L'), entry('truncated', 'name: gnu\nversion: 2.0.0\n'), Buffer.alloc(1024)]);
    assert.equal(chartYamlFromTgz(gzipSync(gnu), 'test.tgz'), 'name: gnu\nversion: 2.0.0\n');
  });

  it('a path that is no chart gets an error naming it and the setting', () => {
    const dir = mkdtempSync(join(tmpdir(), 'hb-chart-'));
    try {
      assert.throws(() => readChartMeta(join(dir, 'missing.tgz')), (e: Error) => e instanceof ChartReadError && /missing\.tgz cannot be read \(ENOENT\); check the chart\.path setting/.test(e.message));
      writeFileSync(join(dir, 'plain.tgz'), 'not gzip');
      assert.throws(() => readChartMeta(join(dir, 'plain.tgz')), /plain\.tgz is not a gzipped chart archive/);
      writeFileSync(join(dir, 'empty.tgz'), gzipSync(Buffer.alloc(1024)));
      assert.throws(() => readChartMeta(join(dir, 'empty.tgz')), /holds no <chart>\/Chart\.yaml/);
      assert.throws(() => readChartMeta(dir), /Chart\.yaml does not exist; is .* a Helm chart\?/);
      assert.throws(() => readChartMeta('/dev/zero'), /neither a directory nor a chart archive/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('decodeReleaseSecret: Helm storage as helm writes it', () => {
  const secret = (release: object, gzip = true) => {
    const json = Buffer.from(JSON.stringify(release));
    const inner = (gzip ? gzipSync(json) : json).toString('base64');
    return {
      apiVersion: 'v1',
      kind: 'Secret',
      type: 'helm.sh/release.v1',
      metadata: { name: 'sh.helm.release.v1.cilium.v2', namespace: 'kube-system', labels: { owner: 'helm', name: 'cilium', version: '2', status: 'deployed' } },
      data: { release: Buffer.from(inner).toString('base64') },
    };
  };
  const release = {
    name: 'cilium',
    namespace: 'kube-system',
    version: 2,
    info: { status: 'deployed', description: 'Upgrade complete' },
    chart: { metadata: { name: 'cilium', version: '1.18.4', appVersion: '1.18.4' } },
    config: { operator: { replicas: 1 } },
    manifest: '---\n',
  };

  it('reads chart, user-supplied values, status and revision', () => {
    assert.deepEqual(decodeReleaseSecret(secret(release)), {
      name: 'cilium',
      namespace: 'kube-system',
      revision: 2,
      status: 'deployed',
      description: 'Upgrade complete',
      chart: cilium('1.18.4'),
      values: { operator: { replicas: 1 } },
    });
  });

  it('no user-supplied values are {}; an uncompressed record decodes too (helm accepts both)', () => {
    assert.deepEqual(decodeReleaseSecret(secret({ ...release, config: null }, false)).values, {});
  });

  it('a Secret that is not a release record says so', () => {
    assert.throws(() => decodeReleaseSecret({ ...secret(release), data: {} } as any), /has no data\.release; it is not a Helm release record/);
    assert.throws(() => decodeReleaseSecret({ ...secret(release), data: { release: Buffer.from('bm90IGpzb24=').toString('base64') } } as any), /is not JSON/);
  });
});

describe('helm failures', () => {
  it('names an unowned leftover, or the release that owns it', () => {
    const unowned =
      'Error: Unable to continue with install: CustomResourceDefinition "applications.argoproj.io" in namespace "" exists and cannot be imported into the current release: invalid ownership metadata; label validation error: missing key "app.kubernetes.io/managed-by": must be set to "Helm"; annotation validation error: missing key "meta.helm.sh/release-name": must be set to "argocd"; annotation validation error: missing key "meta.helm.sh/release-namespace": must be set to "argocd"';
    assert.deepEqual(ownershipConflict(unowned), { object: 'CustomResourceDefinition "applications.argoproj.io"' });
    const owned =
      'Error: UPGRADE FAILED: Unable to continue with update: ServiceAccount "argocd-server" in namespace "argocd" exists and cannot be imported into the current release: invalid ownership metadata; annotation validation error: key "meta.helm.sh/release-name" must equal "argocd": current value is "argo-cd"';
    assert.deepEqual(ownershipConflict(owned), { object: 'ServiceAccount "argocd-server"', owner: { name: 'argo-cd' } });
    assert.equal(ownershipConflict('Error: INSTALLATION FAILED: something else'), undefined);
  });

  it('lists the objects of a rendered manifest, namespaced ones in the release namespace unless they name one', () => {
    const manifest = '---\n# Source: x/templates/a.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: b.example.org\n---\n# empty\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: c\n  namespace: other\n';
    assert.deepEqual(manifestObjects(manifest, 'argocd'), [
      { apiVersion: 'v1', kind: 'ConfigMap', name: 'a', namespace: 'argocd' },
      { apiVersion: 'apiextensions.k8s.io/v1', kind: 'CustomResourceDefinition', name: 'b.example.org', namespace: 'argocd' },
      { apiVersion: 'v1', kind: 'Service', name: 'c', namespace: 'other' },
    ]);
  });

  it('names the field managers of a server-side apply conflict (Helm 4)', () => {
    assert.deepEqual(
      applyConflicts('Error: UPGRADE FAILED: failed to update resource: Apply failed with 1 conflict: conflict with "kubectl-edit" using apps/v1: .spec.replicas'),
      ['kubectl-edit'],
    );
    assert.deepEqual(
      applyConflicts('Error: UPGRADE FAILED: Apply failed with 3 conflicts: conflicts with "kubectl-edit" using v1:\n- .data.a\n- .data.b\nconflicts with "other" using v1:\n- .data.c'),
      ['kubectl-edit', 'other'],
    );
    assert.equal(applyConflicts('Error: UPGRADE FAILED: something else'), undefined);
  });

  it('an apiserver restart mid-install is transient: unexpected EOF and its siblings', () => {
    for (const text of [
      'Error: INSTALLATION FAILED: unexpected EOF',
      'Error: UPGRADE FAILED: Get "https://127.0.0.1:6443/api/v1/namespaces/kube-system/secrets": unexpected EOF',
      'Error: INSTALLATION FAILED: Patch "https://127.0.0.1:6443/apis/apps/v1/...": EOF',
      'read tcp 127.0.0.1:51234->127.0.0.1:6443: read: connection reset by peer',
      'http2: client connection lost',
      'dial tcp 127.0.0.1:6443: connect: connection refused',
      'net/http: TLS handshake timeout',
      'dial tcp 127.0.0.1:6443: i/o timeout',
      'Error: Kubernetes cluster unreachable: Get "https://127.0.0.1:6443/version": dial tcp: connection refused',
    ]) {
      assert.ok(isTransientMessage(text), text);
      assert.ok(isTransientHelmError(text), text);
    }
    assert.ok(isTransientHelmError('Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress'));
    for (const text of ['Error: INSTALLATION FAILED: template: cilium/templates/x.yaml:3: unexpected "}"', 'Error: chart requires kubeVersion: >= 1.30.0']) {
      assert.equal(isTransientHelmError(text), false, text);
    }
    assert.ok(isTransient(new TransientError('x')));
  });
});

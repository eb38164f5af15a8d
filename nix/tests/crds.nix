# The CRDs the bootstrap waits for, in the VM test. In a real cluster cilium-operator
# registers the Cilium ones at runtime and the Argo CD chart ships the ApplicationSet one;
# in the VM no pod can run (no image, no network), so k3s' manifest deployer plays both,
# as the integration rig does with ../shared/crds. Names, groups, scopes and served
# versions match Cilium 1.18 and Argo CD 3.x; the schemas are left open.
let
  open = {
    openAPIV3Schema = {
      type = "object";
      x-kubernetes-preserve-unknown-fields = true;
    };
  };
  crd =
    {
      group,
      kind,
      plural,
      singular,
      scope,
      versions,
    }:
    {
      apiVersion = "apiextensions.k8s.io/v1";
      kind = "CustomResourceDefinition";
      metadata.name = "${plural}.${group}";
      spec = {
        inherit group scope;
        names = {
          inherit kind plural singular;
          listKind = "${kind}List";
        };
        versions = map (v: v // { schema = open; }) versions;
      };
    };
in
{
  ciliumLoadBalancerIPPool = crd {
    group = "cilium.io";
    kind = "CiliumLoadBalancerIPPool";
    plural = "ciliumloadbalancerippools";
    singular = "ciliumloadbalancerippool";
    scope = "Cluster";
    # v2 from 1.18; v2alpha1 still served (deprecated).
    versions = [
      {
        name = "v2";
        served = true;
        storage = true;
      }
      {
        name = "v2alpha1";
        served = true;
        storage = false;
      }
    ];
  };
  ciliumL2AnnouncementPolicy = crd {
    group = "cilium.io";
    kind = "CiliumL2AnnouncementPolicy";
    plural = "ciliuml2announcementpolicies";
    singular = "ciliuml2announcementpolicy";
    scope = "Cluster";
    versions = [
      {
        name = "v2alpha1";
        served = true;
        storage = true;
      }
    ];
  };
  applicationSet = crd {
    group = "argoproj.io";
    kind = "ApplicationSet";
    plural = "applicationsets";
    singular = "applicationset";
    scope = "Namespaced";
    versions = [
      {
        name = "v1alpha1";
        served = true;
        storage = true;
      }
    ];
  };
  application = crd {
    group = "argoproj.io";
    kind = "Application";
    plural = "applications";
    singular = "application";
    scope = "Namespaced";
    versions = [
      {
        name = "v1alpha1";
        served = true;
        storage = true;
      }
    ];
  };
}

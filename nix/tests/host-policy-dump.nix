# The module's firewall and credential decisions (nix/host-policy.nix) for the module's own
# option defaults and for each opt-in, evaluated without nixpkgs: CI has no nixpkgs `lib`, so
# this is what it checks of them on every run (test/unit/nix-contract.test.ts). The defaults
# are read from module.nix's option declarations through the stand-in lib, so flipping one
# there shows here.
#   nix-instantiate --eval --strict --json nix/tests/host-policy-dump.nix
let
  policy = import ../host-policy.nix;
  module = import ../module.nix {
    lib = import ./lib-stub.nix;
    config = { };
    options = { };
    pkgs = { };
  };
  k3sOptions = module.options.services.homelab-bootstrap.k3s;
  defaults = {
    openFirewall = k3sOptions.openFirewall.default;
    apiFromLAN = k3sOptions.firewall.apiFromLAN.default;
    multiNode = k3sOptions.firewall.multiNode.default;
  };
  firewall =
    overrides:
    policy.firewall (
      {
        inherit (defaults) apiFromLAN multiNode;
        podCIDRs = policy.defaultPodCIDRs;
      }
      // overrides
    );
in
{
  inherit defaults;
  firewall = {
    default = firewall { };
    apiFromLAN = firewall { apiFromLAN = true; };
    multiNode = firewall { multiNode = true; };
    dualStack = firewall {
      podCIDRs = [
        "10.42.0.0/16"
        "fd42::/56"
      ];
    };
  };
  # Every credential set, as the module's settings would hold them.
  credentials = policy.credentials {
    kubeconfigFile = "/etc/rancher/k3s/k3s.yaml";
    sops.ageKeyFile = "/var/lib/sops-nix/keys.txt";
    cloudflare.apiTokenFile = "/run/secrets/cloudflare-api-token";
    gitops.repoCredentialFile = "/run/secrets/gitops-repo-token";
  };
  # Unset credentials are left out rather than passed as empty paths.
  credentialsWithoutOptional = policy.credentials {
    kubeconfigFile = "/etc/rancher/k3s/k3s.yaml";
    sops.ageKeyFile = "/var/lib/sops-nix/keys.txt";
    cloudflare = null;
  };
}

# Names the NixOS module shares with the daemon, in one place so the contract test
# (test/unit/nix-contract.test.ts) can compare them with src/credentials.ts and the CLI.
{
  # LoadCredential= names the daemon looks up in $CREDENTIALS_DIRECTORY, and the settings
  # field that holds the source path of each.
  credentials = [
    {
      name = "kubeconfig";
      setting = [ "kubeconfigFile" ];
    }
    {
      name = "age-key";
      setting = [
        "sops"
        "ageKeyFile"
      ];
    }
    {
      name = "cloudflare-api-token";
      setting = [
        "cloudflare"
        "apiTokenFile"
      ];
    }
  ];

  # Step names `apply --only` accepts (src/steps/types.ts STEP_NAMES).
  steps = [
    "preflight"
    "cilium"
    "cilium-crds"
    "cilium-l2"
    "age-key"
    "argocd"
    "tunnel"
    "dns"
    "root-appset"
  ];

  # What the periodic reconcile re-runs: the Cloudflare side, which drifts without the
  # cluster changing (a record deleted by hand, a rotated token, a recreated tunnel).
  reconcileSteps = [
    "tunnel"
    "dns"
  ];

  # `apply` exit status when another run holds the lock (src/cli.ts EXIT.locked).
  lockedExitStatus = 75;

  stateDirectory = "homelab-bootstrap";
}

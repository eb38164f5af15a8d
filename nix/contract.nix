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
    {
      name = "git-repo-credential";
      setting = [
        "gitops"
        "repoCredentialFile"
      ];
    }
  ];

  # The credentials the reconcile unit (`apply --only tunnel --only dns`) is given; the main
  # unit gets every credential that is set. The tunnel and DNS steps call Cloudflare with the
  # API token (src/adapters/cloudflare.ts); the tunnel step writes Secret
  # cloudflared/tunnel-token and `apply` takes the bootstrap Lease, both with the kubeconfig
  # (src/steps/tunnel.ts, src/cli.ts). Neither reads the age key nor the git credential.
  reconcileCredentials = [
    "kubeconfig"
    "cloudflare-api-token"
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

  # `apply` exit status when everything converged except DNS records that collide with records
  # this install does not own (reported, left alone until the user decides). The reconcile unit
  # counts it as success, so a conflict waiting for the user does not mark it failed every
  # 15 minutes. Keep it equal to the daemon's exit code for that case (src/cli.ts EXIT).
  dnsConflictsExitStatus = 4;

  stateDirectory = "homelab-bootstrap";
}

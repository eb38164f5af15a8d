# checks.<system>.module-eval: the module in a minimal, real NixOS system (SPEC.md's homelab,
# ./homelab.nix). Evaluating the system's toplevel runs every NixOS assertion without
# building the system; building this check builds the daemon, runs `validate-config` on the
# generated settings (a bad setting fails here, with the daemon's message) and checks the
# generated units.
{
  pkgs,
  self,
  nixosSystem,
}:
let
  system = pkgs.stdenv.hostPlatform.system;
  machine = nixosSystem {
    modules = [
      self.nixosModules.default
      ./homelab.nix
      {
        nixpkgs.hostPlatform = system;
        boot.loader.grub.enable = false;
        fileSystems."/" = {
          device = "/dev/disk/by-label/nixos";
          fsType = "ext4";
        };
        system.stateVersion = "26.05";
      }
    ];
  };
  inherit (machine.config.systemd) units;
  inherit (machine.config.networking) firewall;
in
pkgs.runCommand "homelab-bootstrap-module-eval"
  {
    # drvPath forces the whole evaluation (assertions included) but builds nothing of it.
    toplevel = builtins.unsafeDiscardStringContext machine.config.system.build.toplevel.drvPath;
    bootstrapUnit = units."homelab-bootstrap.service".text;
    reconcileUnit = units."homelab-bootstrap-reconcile.service".text;
    timerUnit = units."homelab-bootstrap-reconcile.timer".text;
    k3sUnit = units."k3s.service".text;
    k3sDropIn = machine.config.environment.etc."rancher/k3s/config.yaml.d/50-homelab-bootstrap.yaml".text;
    firewallRules = firewall.extraCommands;
    openTCPPorts = toString firewall.allowedTCPPorts;
    passAsFile = [
      "bootstrapUnit"
      "reconcileUnit"
      "timerUnit"
      "k3sUnit"
      "k3sDropIn"
      "firewallRules"
    ];
  }
  ''
    set -eu
    expect() { grep -qE -- "$2" "$1" || { echo "missing in $1: $2" >&2; cat "$1" >&2; exit 1; }; }
    reject() { ! grep -qE -- "$2" "$1" || { echo "unexpected in $1: $2" >&2; exit 1; }; }

    expect "$bootstrapUnitPath" '^Type=exec$'
    expect "$bootstrapUnitPath" '^RemainAfterExit=true$'
    expect "$bootstrapUnitPath" '^Restart=on-failure$'
    expect "$bootstrapUnitPath" '^RestartMaxDelaySec=5min$'
    expect "$bootstrapUnitPath" '^After=.*k3s\.service'
    expect "$bootstrapUnitPath" '^Wants=.*k3s\.service'
    expect "$bootstrapUnitPath" '^LoadCredential=kubeconfig:/etc/rancher/k3s/k3s\.yaml$'
    expect "$bootstrapUnitPath" '^LoadCredential=age-key:/var/lib/sops-nix/keys\.txt$'
    expect "$bootstrapUnitPath" '^LoadCredential=cloudflare-api-token:/run/secrets/cloudflare-api-token$'
    expect "$bootstrapUnitPath" '^DynamicUser=true$'
    expect "$bootstrapUnitPath" '^ProtectSystem=strict$'
    expect "$bootstrapUnitPath" '^CapabilityBoundingSet=$'
    expect "$bootstrapUnitPath" '^SystemCallFilter=@system-service$'
    expect "$bootstrapUnitPath" '^ExecStart=/nix/store/[^ ]+/bin/homelab-bootstrap apply --config /nix/store/[^ ]+-homelab-bootstrap\.json$'
    reject "$bootstrapUnitPath" 'AGE-SECRET-KEY'

    expect "$reconcileUnitPath" '^Type=oneshot$'
    expect "$reconcileUnitPath" 'apply --config [^ ]+ --only tunnel --only dns$'
    expect "$reconcileUnitPath" '^SuccessExitStatus=75$'
    expect "$reconcileUnitPath" '^SuccessExitStatus=4$'
    expect "$reconcileUnitPath" '^LoadCredential=kubeconfig:/etc/rancher/k3s/k3s\.yaml$'
    expect "$reconcileUnitPath" '^LoadCredential=cloudflare-api-token:/run/secrets/cloudflare-api-token$'
    reject "$reconcileUnitPath" '^LoadCredential=age-key:'
    expect "$timerUnitPath" '^OnUnitInactiveSec=15min$'

    # Cilium's k3s flags are in a config drop-in, not on the command line.
    expect "$k3sDropInPath" '"flannel-backend":"none"'
    expect "$k3sDropInPath" '"disable-network-policy":true'
    expect "$k3sDropInPath" '"disable-kube-proxy":true'
    expect "$k3sUnitPath" '--disable=servicelb'
    expect "$k3sUnitPath" '--disable=traefik'
    # A changed drop-in restarts k3s on `nixos-rebuild switch` (an /etc change alone does not).
    expect "$k3sUnitPath" '^X-Restart-Triggers='
    reject "$k3sUnitPath" 'write-kubeconfig-mode'

    # From the LAN only the Ingress; metrics, Hubble, kubelet and the API from the pod network.
    [ "$openTCPPorts" = "80 443" ] || { echo "open to the LAN: $openTCPPorts, expected 80 443" >&2; exit 1; }
    expect "$firewallRulesPath" '^iptables -A nixos-fw -s 10\.42\.0\.0/16 -p tcp -m multiport --dports [0-9,]*9100[0-9,]* -j nixos-fw-accept$'

    echo "$toplevel" > $out
  ''

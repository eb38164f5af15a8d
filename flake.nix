{
  description = "homelab-bootstrap: brings a k3s homelab from bare k3s to \"Argo CD owns everything\", idempotently, on every boot";

  # The current stable release (26.05: Node 24, Helm 3.20, k3s). No flake.lock is committed
  # yet: locking needs nixpkgs' narHash, which could not be computed where this was written
  # (no access to nixpkgs). The first `nix flake lock` (or any `nix build`/`nix flake check`)
  # pins the branch's current commit; commit that flake.lock. See docs/nixos.md.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      # The daemon drives k3s through systemd units; it is Linux-only like k3s.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        homelab-bootstrap = pkgs.callPackage ./nix/package.nix { };
        default = homelab-bootstrap;
      });

      # The module, with its package defaulting to this flake's build (same nixpkgs pin as
      # the checks below) rather than one built from the importing system's nixpkgs.
      nixosModules = rec {
        homelab-bootstrap =
          { lib, pkgs, ... }:
          {
            imports = [ ./nix/module.nix ];
            services.homelab-bootstrap.package =
              lib.mkDefault
                self.packages.${pkgs.stdenv.hostPlatform.system}.default;
          };
        default = homelab-bootstrap;
      };

      checks = forAllSystems (
        pkgs:
        let
          system = pkgs.stdenv.hostPlatform.system;
        in
        {
          # Builds the daemon; its installCheck runs `--version` and validates the example.
          package = self.packages.${system}.default;
          # The module in a minimal NixOS system: evaluation, assertions, the settings file
          # validated by the daemon, the generated units.
          module-eval = import ./nix/tests/module-eval-nixos.nix {
            inherit pkgs self;
            nixosSystem = lib.nixosSystem;
          };
          # A k3s server in a VM: the whole bootstrap against local charts and the rig's
          # Cloudflare emulator. Needs KVM.
          vm-bootstrap = pkgs.testers.runNixOSTest (import ./nix/tests/vm-bootstrap.nix { inherit self; });
        }
      );

      # `nix develop`: the tools of .ci/run. The tests' binaries are not taken from nixpkgs (it
      # lacks some, e.g. Helm 4 beside Helm 3, kwok, and its versions are not the pins):
      # run `bash scripts/test-binaries.sh` once in the shell (it needs only go); it builds them
      # into .bin/, where test/rig/binaries.ts looks by default.
      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            pkgs.nodejs_24
            pkgs.go
            pkgs.git
          ];
          # The module-evaluation tests of test/unit/nix-contract.test.ts need nixpkgs' lib.
          shellHook = ''
            export NIXPKGS_LIB=${pkgs.path}/lib
          '';
        };
      });
    };
}

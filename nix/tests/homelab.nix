# SPEC.md's homelab (examples/homelab.json) as a NixOS configuration sets it: the
# services.homelab-bootstrap part of the configuration.nix in docs/nixos.md. Evaluated by
# nix/tests/module-eval.nix (here) and nix/tests/module-eval-nixos.nix (flake check), and its
# JSON is compared with examples/homelab.json by test/unit/nix-contract.test.ts.
{
  services.homelab-bootstrap = {
    enable = true;
    # A sops-nix secret's path (config.sops.secrets.cloudflare-api-token.path in the docs).
    cloudflare.apiTokenFile = "/run/secrets/cloudflare-api-token";
    settings = {
      domain = "peterstorm.io";
      network = {
        lbPool = {
          start = "192.168.0.240";
          stop = "192.168.0.250";
        };
        ingressIP = "192.168.0.240";
        interfaces = [ "^enp[0-9]+s[0-9]+$" ];
      };
      gitops = {
        repoURL = "https://github.com/peterstorm/homelab-bootstrap.git";
        revision = "main";
        path = "manifests/argocd-homelab";
      };
      cloudflare = {
        accountId = "0123456789abcdef0123456789abcdef";
        tunnelName = "homelab";
      };
      hosts = [
        {
          name = "echo-server";
          access = "external";
        }
        {
          name = "sonarr";
          access = "local";
        }
        {
          name = "radarr";
          access = "local";
        }
        {
          name = "prowlarr";
          access = "local";
        }
        {
          name = "overseerr";
          access = "local";
        }
        {
          name = "transmission";
          access = "local";
        }
        {
          name = "plex";
          access = "local";
          ip = "192.168.0.241";
        }
        {
          name = "grafana";
          access = "local";
        }
        {
          name = "hubble";
          access = "local";
        }
        {
          name = "argocd";
          access = "local";
        }
      ];
    };
  };
}

# NixOS VM test: a k3s server with services.homelab-bootstrap, the rig's Cloudflare emulator
# (test/rig/cloudflare-emulator-main.ts, run by the package's Node) and the rig's stand-in
# charts (test/fixtures/charts). The sandbox has no network, so nothing is pulled: the charts
# come from the store, the CRDs from k3s' manifest deployer (./crds.nix), and no pod ever
# needs an image (the node stays NotReady without a CNI; the bootstrap does not wait for pods
# when cilium.waitForReady is false), hence no services.k3s.images.
#
#   nix build .#checks.x86_64-linux.vm-bootstrap        (needs KVM)
#   nix run .#checks.x86_64-linux.vm-bootstrap.driverInteractive
{ self }:
{ lib, ... }:
let
  accountId = "0123456789abcdef0123456789abcdef";
  zoneId = "fedcba9876543210fedcba9876543210";
  domain = "example.org";
  emulatorPort = 8787;
  tokenFile = "/run/secrets/cloudflare-api-token";
  ageKeyFile = "/var/lib/sops-nix/keys.txt";
  crds = import ./crds.nix;
in
{
  name = "homelab-bootstrap";

  nodes.server =
    { config, pkgs, ... }:
    let
      package = config.services.homelab-bootstrap.package;
      node = package.nodejs or pkgs.nodejs_24;
      # The emulator imports only node: builtins; package.json makes its .ts files ES modules.
      rig = lib.fileset.toSource {
        root = ../..;
        fileset = lib.fileset.unions [
          ../../package.json
          ../../test/rig
        ];
      };
    in
    {
      imports = [ self.nixosModules.default ];

      virtualisation = {
        memorySize = 3072;
        cores = 2;
        diskSize = 4096;
      };

      environment.systemPackages = [
        pkgs.curl
        pkgs.jq
        pkgs.age
        package
      ];

      services.k3s = {
        # Pods never run here; these would only sit Pending and add noise.
        disable = [
          "coredns"
          "local-storage"
          "metrics-server"
        ];
        manifests.test-crds.content = builtins.attrValues crds;
      };

      # The secrets a real host gets from sops-nix, made up at boot and never in the store.
      systemd.services.test-secrets = {
        wantedBy = [ "multi-user.target" ];
        before = [
          "homelab-bootstrap.service"
          "cloudflare-emulator.service"
        ];
        requiredBy = [
          "homelab-bootstrap.service"
          "cloudflare-emulator.service"
        ];
        path = [
          pkgs.age
          pkgs.coreutils
        ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          UMask = "0077";
        };
        script = ''
          install -d -m 0700 ${dirOf ageKeyFile} ${dirOf tokenFile}
          [ -s ${ageKeyFile} ] || age-keygen -o ${ageKeyFile} 2>/dev/null
          [ -s ${tokenFile} ] || head -c 32 /dev/urandom | base64 | tr -d '=+/\n' > ${tokenFile}
        '';
      };

      systemd.services.cloudflare-emulator = {
        wantedBy = [ "multi-user.target" ];
        before = [ "homelab-bootstrap.service" ];
        serviceConfig = {
          ExecStart = lib.concatStringsSep " " [
            "${node}/bin/node"
            "${rig}/test/rig/cloudflare-emulator-main.ts"
            "--port ${toString emulatorPort}"
            "--token-file ${tokenFile}"
            "--account-id ${accountId}"
            "--zone ${domain}=${zoneId}"
          ];
          # Up means listening: the bootstrap starts right after.
          ExecStartPost = "${pkgs.curl}/bin/curl -sf --retry 60 --retry-connrefused --retry-delay 1 -o /dev/null http://127.0.0.1:${toString emulatorPort}/__emulator/state";
        };
      };

      services.homelab-bootstrap = {
        enable = true;
        inherit ageKeyFile;
        cloudflare.apiTokenFile = tokenFile;
        charts = {
          cilium = ../../test/fixtures/charts/cilium;
          argocd = ../../test/fixtures/charts/argo-cd;
        };
        logLevel = "debug";
        settings = {
          inherit domain;
          network = {
            lbPool = {
              start = "192.168.1.240";
              stop = "192.168.1.250";
            };
            ingressIP = "192.168.1.240";
            interfaces = [ "^eth[0-9]+$" ];
          };
          cilium.waitForReady = false;
          gitops.repoURL = "https://git.example.org/homelab.git";
          cloudflare = {
            inherit accountId zoneId;
            apiBaseUrl = "http://127.0.0.1:${toString emulatorPort}/client/v4";
          };
          hosts = [
            {
              name = "echo-server";
              access = "external";
            }
            {
              name = "grafana";
              access = "local";
            }
            {
              name = "plex";
              access = "local";
              ip = "192.168.1.241";
            }
          ];
        };
      };
    };

  testScript =
    { nodes, ... }:
    let
      exe = lib.getExe nodes.server.services.homelab-bootstrap.package;
    in
    ''
      import json

      EMU = "http://127.0.0.1:${toString emulatorPort}"

      def emulator_state():
          return json.loads(server.succeed(f"curl -sf {EMU}/__emulator/state"))

      def records():
          state = emulator_state()
          return {(r["name"], r["type"]): r for z in state["zones"] for r in z["records"]}

      def wait_bootstrap_done():
          # Type=exec + RemainAfterExit: "exited" with Result=success once a run succeeded.
          server.wait_until_succeeds(
              "test \"$(systemctl show -P SubState homelab-bootstrap)\" = exited"
              " && test \"$(systemctl show -P Result homelab-bootstrap)\" = success",
              timeout=900,
          )

      def resource_versions():
          return server.succeed(
              "k3s kubectl -n argocd get secret sops-age-key -o jsonpath='{.metadata.resourceVersion}';"
              " echo;"
              " k3s kubectl -n argocd get applicationsets -o jsonpath='{.items[*].metadata.resourceVersion}';"
              " echo;"
              " k3s kubectl get secrets -A -l owner=helm -o name | sort"
          )

      start_all()
      server.wait_for_unit("k3s.service")
      server.wait_until_succeeds("k3s kubectl get --raw /readyz", timeout=300)

      with subtest("the bootstrap unit succeeds"):
          wait_bootstrap_done()
          server.succeed("${exe} status --state-dir /var/lib/homelab-bootstrap >&2")

      with subtest("the k3s flags are in effect"):
          # Cilium's flags come from the module's config drop-in, the rest from the command line.
          server.succeed("grep -q '\"flannel-backend\":\"none\"' /etc/rancher/k3s/config.yaml.d/50-homelab-bootstrap.yaml")
          for flag in ["--disable=servicelb", "--disable=traefik"]:
              server.succeed(f"systemctl show -P ExecStart k3s | grep -q -- '{flag}'")
          # ... and what they switch off is off: no flannel, kube-proxy, traefik or servicelb.
          server.fail("ip link show flannel.1")
          server.fail("k3s kubectl get node -o yaml | grep -q flannel.alpha.coreos.com")
          server.fail("journalctl -u k3s --no-pager | grep -q 'Running kube-proxy'")
          server.fail("k3s kubectl -n kube-system get helmchart traefik")
          server.fail("k3s kubectl -n kube-system get daemonsets -o name | grep -q svclb")
          # Root-only admin kubeconfig; the firewall stays on with a loose reverse-path filter.
          server.succeed("test \"$(stat -c %a /etc/rancher/k3s/k3s.yaml)\" = 600")
          server.succeed("systemctl is-active firewall.service")
          server.succeed("iptables -t mangle -S nixos-fw-rpfilter | grep -q -- --loose")
          # The metrics ports (node-exporter's 9100 among them) are open to the pod network only.
          server.succeed("iptables -S nixos-fw | grep -- '-s 10.42.0.0/16' | grep -q 9100")
          server.fail("iptables -S nixos-fw | grep -v -- '-s 10.42.0.0/16' | grep -q 9100")

      with subtest("the age key Secret and the root ApplicationSet exist"):
          server.succeed(
              "k3s kubectl -n argocd get secret sops-age-key -o jsonpath='{.data.keys\\.txt}'"
              " | base64 -d | cmp - ${ageKeyFile}"
          )
          server.succeed("k3s kubectl -n argocd get applicationsets -o name | grep -q .")

      with subtest("the emulator holds the expected records"):
          state = emulator_state()
          tunnels = [t for t in state["tunnels"] if not t.get("deleted_at")]
          assert len(tunnels) == 1, f"expected one tunnel, got {tunnels}"
          recs = records()
          echo = recs[("echo-server.${domain}", "CNAME")]
          assert echo["content"] == f"{tunnels[0]['id']}.cfargotunnel.com", echo
          assert echo["proxied"] is True, echo
          grafana = recs[("grafana.${domain}", "A")]
          assert grafana["content"] == "192.168.1.240" and grafana["proxied"] is False, grafana
          plex = recs[("plex.${domain}", "A")]
          assert plex["content"] == "192.168.1.241" and plex["proxied"] is False, plex
          server.succeed("k3s kubectl -n cloudflared get secret tunnel-token")

      with subtest("a second start changes nothing"):
          before = resource_versions()
          server.succeed(f"curl -sf -X DELETE {EMU}/__emulator/requests")
          server.succeed("systemctl restart homelab-bootstrap.service")
          wait_bootstrap_done()
          log = json.loads(server.succeed(f"curl -sf {EMU}/__emulator/requests"))
          assert log["writes"] == 0, f"Cloudflare writes on a second run: {log['byMethod']}"
          after = resource_versions()
          assert before == after, f"cluster objects changed:\n{before}\n---\n{after}"
          server.succeed("${exe} status --state-dir /var/lib/homelab-bootstrap | grep -q ', 0 changes,'")

      with subtest("the reconcile timer heals a deleted record"):
          server.succeed("systemctl list-timers --all | grep -q homelab-bootstrap-reconcile")
          grafana_id = records()[("grafana.${domain}", "A")]["id"]
          server.succeed(
              f"curl -sf -X DELETE -H \"Authorization: Bearer $(cat ${tokenFile})\""
              f" {EMU}/client/v4/zones/${zoneId}/dns_records/{grafana_id}"
          )
          assert ("grafana.${domain}", "A") not in records()
          server.succeed("systemctl start homelab-bootstrap-reconcile.service")
          assert records()[("grafana.${domain}", "A")]["content"] == "192.168.1.240"

      with subtest("the age key and the token never reach the journal"):
          key = server.succeed("grep -o 'AGE-SECRET-KEY-[0-9A-Z]*' ${ageKeyFile}").strip()
          token = server.succeed("cat ${tokenFile}").strip()
          assert key and token
          server.fail(f"journalctl --no-pager -o cat | grep -qF '{key}'")
          server.fail(f"journalctl --no-pager -o cat | grep -qF '{token}'")
          # Nor the settings file in the store (it holds paths only).
          settings = server.succeed(
              "systemctl show -P ExecStart homelab-bootstrap | grep -o '/nix/store/[^ ;]*-homelab-bootstrap.json' | head -n1"
          ).strip()
          assert settings, "no settings file in ExecStart"
          server.fail(f"grep -qF '{key}' {settings}")
          server.fail(f"grep -qF '{token}' {settings}")
    '';
}

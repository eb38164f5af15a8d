# services.homelab-bootstrap: runs the daemon after k3s on every boot and whenever its
# settings change, re-runs the Cloudflare steps on a timer, and configures k3s the way
# Cilium needs it. Shaped after nixpkgs' services.cloudflared (DynamicUser, LoadCredential)
# and sops-nix (secrets are paths outside the store, never values).
{
  config,
  lib,
  options,
  pkgs,
  ...
}:
let
  inherit (lib)
    literalExpression
    literalMD
    mkDefault
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    types
    ;

  cfg = config.services.homelab-bootstrap;
  contract = import ./contract.nix;
  jsonFormat = pkgs.formats.json { };
  settingsModel = import ./settings-options.nix {
    inherit lib;
    jsonType = jsonFormat.type;
  };

  # A secret is named by a path and read by systemd at unit start (LoadCredential=). A path
  # literal (./key.txt) or anything under /nix/store would put the secret in the
  # world-readable store, so only absolute strings outside it are accepted.
  secretPath = lib.mkOptionType {
    name = "secretPath";
    description = "absolute path outside the Nix store, as a string";
    descriptionClass = "noun";
    check =
      x: builtins.isString x && lib.hasPrefix "/" x && !lib.hasPrefix "${builtins.storeDir}/" x;
    merge = lib.mergeEqualOption;
  };

  chartType = types.nullOr (types.either types.package types.path);

  sopsImported = options ? sops && options.sops ? age && options.sops.age ? keyFile;
  sopsKeyFile = if sopsImported then config.sops.age.keyFile else null;

  # What the daemon reads: unset options dropped, so its own defaults apply.
  settingsValue = settingsModel.clean cfg.settings;
  rawSettingsFile = jsonFormat.generate "homelab-bootstrap-settings.json" settingsValue;

  # The daemon validates its own settings while the system is built, so a bad setting stops
  # `nixos-rebuild` with the daemon's message (JSON paths; `$` is
  # services.homelab-bootstrap.settings) instead of a unit failing at boot. It checks shape
  # only: the credential files exist on the target, not in the build sandbox.
  settingsFile =
    if cfg.checkSettings then
      pkgs.runCommand "homelab-bootstrap.json"
        {
          nativeBuildInputs = [ cfg.package ];
          preferLocalBuild = true;
        }
        ''
          if ! homelab-bootstrap validate-config ${rawSettingsFile}; then
            echo >&2
            echo "error: homelab-bootstrap rejected services.homelab-bootstrap.settings (above, \$ stands for services.homelab-bootstrap.settings)" >&2
            exit 1
          fi
          cp ${rawSettingsFile} $out
        ''
    else
      rawSettingsFile;

  # name:path pairs for LoadCredential=, taken from the final settings so that a path set
  # through `settings` and one set through the convenience options cannot disagree.
  credentialSources = lib.filter (c: c.path != null) (
    map (c: {
      inherit (c) name;
      path = lib.attrByPath c.setting null settingsValue;
    }) contract.credentials
  );

  exe = lib.getExe cfg.package;
  logArgs = lib.optionalString (cfg.logLevel != null) " --log-level ${cfg.logLevel}";

  k3sEnabled = config.services.k3s.enable or false;
  sopsUnit = lib.optional (config.systemd.services ? sops-install-secrets) "sops-install-secrets.service";
  dependencies = [ "network-online.target" ] ++ lib.optional k3sEnabled "k3s.service" ++ sopsUnit;

  # As tight as Node 24 and helm should tolerate; only the VM test proves it (it runs both
  # under exactly this). Left out, with the reason:
  #  - MemoryDenyWriteExecute: V8's JIT needs writable+executable pages.
  #  - PrivateNetwork / IPAddressDeny: the daemon talks to the API server, Cloudflare and
  #    Helm repositories, whose addresses are not known in advance.
  #  - ProcSubset=pid: Node reads /proc/meminfo to size its heap.
  #  - RootDirectory: the closure lives in /nix/store, which ProtectSystem=strict already
  #    makes read-only.
  # NotifyAccess=all is needed because the status line comes from a `systemd-notify` child.
  hardening = {
    DynamicUser = true;
    # One name for both units, so they share the dynamic uid and the state directory
    # (the run lock lives there).
    User = "homelab-bootstrap";
    StateDirectory = contract.stateDirectory;
    StateDirectoryMode = "0700";
    UMask = "0077";
    LoadCredential = map (c: "${c.name}:${c.path}") credentialSources;

    NotifyAccess = "all";
    NoNewPrivileges = true;
    CapabilityBoundingSet = [ "" ];
    AmbientCapabilities = [ "" ];
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    DevicePolicy = "closed";
    PrivateUsers = true;
    PrivateMounts = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    KeyringMode = "private";
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    RemoveIPC = true;
    LockPersonality = true;
    # AF_UNIX: journald, nscd and the notify socket. No netlink or packet sockets.
    RestrictAddressFamilies = [
      "AF_INET"
      "AF_INET6"
      "AF_UNIX"
    ];
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service"
      "~@privileged"
      "~@resources"
    ];
    # Node and Go try setrlimit and friends at start and carry on when refused; a denied
    # call must fail with EPERM rather than kill the process.
    SystemCallErrorNumber = "EPERM";
    # Only the store is executable: nothing written to the state directory can be run.
    NoExecPaths = [ "/" ];
    ExecPaths = [ "/nix/store" ];
  };

  environment = {
    # Helm and Node libraries look for $HOME; a dynamic user has none. (The state directory
    # is reachable under this name inside the unit, also with DynamicUser.)
    HOME = "/var/lib/${contract.stateDirectory}";
  };

  # k3s flags, split into words whether extraFlags is a string or a list.
  k3sTokens =
    let
      raw = lib.flatten [ (config.services.k3s.extraFlags or [ ]) ];
    in
    lib.concatMap (s: lib.filter (w: builtins.isString w && w != "") (builtins.split "[[:space:]]+" s)) raw;
  # Values given to a flag as `--flag=value` or `--flag value`.
  flagValues =
    flag:
    lib.concatLists (
      lib.imap0 (
        i: t:
        if t == flag then
          lib.optional (i + 1 < builtins.length k3sTokens && !lib.hasPrefix "-" (builtins.elemAt k3sTokens (i + 1))) (
            builtins.elemAt k3sTokens (i + 1)
          )
        else if lib.hasPrefix "${flag}=" t then
          [ (lib.removePrefix "${flag}=" t) ]
        else
          [ ]
      ) k3sTokens
    );
  # Values given to a boolean flag as `--flag=value` (the bare flag means true).
  boolFlagValues =
    flag: map (lib.removePrefix "${flag}=") (lib.filter (lib.hasPrefix "${flag}=") k3sTokens);
  hasFlag = flag: lib.any (t: t == flag || lib.hasPrefix "${flag}=" t) k3sTokens;
  isFalse = v: lib.elem (lib.toLower v) [ "false" "0" "f" ];

  # Ports of a k3s server running Cilium (kube-proxy replacement, VXLAN, Hubble, metrics).
  k3sTCPPorts = [
    6443 # Kubernetes API (kubectl, agents joining)
    10250 # kubelet (metrics-server, logs/exec)
    4240 # cilium-health
    4244 # Hubble server, read by hubble-relay
    9962 # cilium-agent metrics
    9963 # cilium-operator metrics
    9964 # cilium-envoy metrics
    9965 # Hubble metrics
    80 # Cilium shared ingress on the L2-announced VIP (Envoy receives it in the host stack)
    443
  ];
  k3sUDPPorts = [
    8472 # VXLAN between nodes
  ];
in
{
  options.services.homelab-bootstrap = {
    enable = mkEnableOption ''
      homelab-bootstrap, which brings a k3s server from bare to "Argo CD owns everything"
      (Cilium, Argo CD with ksops, the sops age key, Cloudflare tunnel and DNS, the root
      ApplicationSet) after every boot, idempotently
    '';

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalMD "the flake's `packages.\${system}.default` (built with this `pkgs` when the module is imported without the flake)";
      description = "The homelab-bootstrap package (its `bin/homelab-bootstrap` has `helm` on its PATH).";
    };

    settings = mkOption {
      type = types.submodule {
        freeformType = jsonFormat.type;
        options = settingsModel.options;
      };
      default = { };
      example = literalExpression ''
        {
          domain = "example.org";
          network = {
            lbPool = { start = "192.168.0.240"; stop = "192.168.0.250"; };
            ingressIP = "192.168.0.240";
            interfaces = [ "^enp[0-9]+s[0-9]+$" ];
          };
          gitops.repoURL = "https://github.com/you/homelab.git";
          cloudflare.accountId = "0123456789abcdef0123456789abcdef";
          hosts = [
            { name = "echo-server"; access = "external"; }
            { name = "grafana"; access = "local"; }
          ];
        }
      '';
      description = ''
        The daemon's settings file, written to the Nix store as JSON and checked with
        `homelab-bootstrap validate-config` while the system is built. The typed options
        below are generated from the daemon's own schema; options left `null` take the
        daemon's default. Unknown fields pass through (for a newer `package`) and are
        rejected by the daemon if it does not know them either.

        Never put a secret here: the store is world-readable. The credential fields
        (`kubeconfigFile`, `sops.ageKeyFile`, `cloudflare.apiTokenFile`) hold paths and are
        set from [](#opt-services.homelab-bootstrap.kubeconfigFile),
        [](#opt-services.homelab-bootstrap.ageKeyFile) and
        [](#opt-services.homelab-bootstrap.cloudflare.apiTokenFile).
      '';
    };

    kubeconfigFile = mkOption {
      type = secretPath;
      default = "/etc/rancher/k3s/k3s.yaml";
      description = ''
        The k3s admin kubeconfig, read by systemd and handed to the daemon with
        `LoadCredential=` (the file stays root-only; the service runs as a dynamic user).
      '';
    };

    ageKeyFile = mkOption {
      type = secretPath;
      default = if sopsKeyFile != null then sopsKeyFile else "/var/lib/sops-nix/keys.txt";
      defaultText = literalMD "`config.sops.age.keyFile` when sops-nix is imported and sets it, else `\"/var/lib/sops-nix/keys.txt\"`";
      example = "/var/lib/sops-nix/key.txt";
      description = ''
        The host's age identity, stored in the cluster as Secret `argocd/sops-age-key` so
        ksops can decrypt the GitOps tree. Passed with `LoadCredential=`.
      '';
    };

    cloudflare.apiTokenFile = mkOption {
      type = types.nullOr secretPath;
      default = null;
      example = "/run/secrets/cloudflare-api-token";
      description = ''
        File holding the Cloudflare API token (Account › Cloudflare Tunnel › Edit,
        Zone › DNS › Edit, Zone › Zone › Read), for example a sops-nix secret's `path`.
        Setting it enables the tunnel and DNS steps together with
        `settings.cloudflare.accountId`. Passed with `LoadCredential=`.
      '';
    };

    charts = {
      cilium = mkOption {
        type = chartType;
        default = null;
        example = literalExpression ''
          pkgs.fetchurl {
            url = "https://helm.cilium.io/cilium-1.20.0.tgz";
            hash = "sha256-…";
          }
        '';
        description = ''
          A packaged Cilium chart (`.tgz`, or an unpacked chart directory) to install
          instead of downloading `settings.cilium.chart` at boot; sets
          `settings.cilium.chart.path`. Pinning charts in Nix makes the bootstrap work
          without reaching the Helm repository.
        '';
      };
      argocd = mkOption {
        type = chartType;
        default = null;
        example = literalExpression ''
          pkgs.fetchurl {
            url = "https://github.com/argoproj/argo-helm/releases/download/argo-cd-10.1.1/argo-cd-10.1.1.tgz";
            hash = "sha256-…";
          }
        '';
        description = "Like [](#opt-services.homelab-bootstrap.charts.cilium), for the Argo CD chart (`settings.argocd.chart.path`).";
      };
    };

    checkSettings = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Run `homelab-bootstrap validate-config` on the settings file while building the
        system. Turn off only when cross-compiling, where the target's package cannot run
        on the build machine.
      '';
    };

    logLevel = mkOption {
      type = types.nullOr (
        types.enum [
          "trace"
          "debug"
          "info"
          "warn"
          "error"
          "fatal"
        ]
      );
      default = null;
      description = "Log level of the daemon (`--log-level`); `null` keeps its default.";
    };

    reconcile = {
      enable = mkOption {
        type = types.bool;
        default = cfg.settings.cloudflare != null;
        defaultText = literalMD "`true` when `settings.cloudflare` is set";
        description = ''
          Re-run the Cloudflare steps on a timer, so a record deleted by hand, a rotated
          token or a recreated tunnel heals without a reboot.
        '';
      };
      interval = mkOption {
        type = types.str;
        default = "15min";
        example = "1h";
        description = "Time between the end of one reconcile run and the start of the next (a systemd time span).";
      };
      steps = mkOption {
        type = types.listOf (types.enum contract.steps);
        default = contract.reconcileSteps;
        description = "Steps the timer re-runs (`apply --only …`).";
      };
    };

    k3s = {
      configure = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Enable a k3s server configured for Cilium: `--flannel-backend=none`,
          `--disable-network-policy`, `--disable-kube-proxy` (Cilium replaces kube-proxy),
          `servicelb` and `traefik` disabled (Cilium announces LoadBalancer IPs and serves
          Ingress), the kubeconfig left root-only, the firewall's reverse-path filter set to
          `loose` (strict drops Cilium's traffic) and the kernel modules Cilium's iptables
          rules use loaded. Contradicting k3s flags fail evaluation. Turn off when k3s is
          managed elsewhere.
        '';
      };
      openFirewall = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Open the ports a k3s server with Cilium needs: TCP ${lib.concatMapStringsSep ", " toString k3sTCPPorts},
          UDP ${lib.concatMapStringsSep ", " toString k3sUDPPorts}. The firewall stays on.
        '';
      };
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      services.homelab-bootstrap.settings = {
        kubeconfigFile = cfg.kubeconfigFile;
        sops.ageKeyFile = cfg.ageKeyFile;
        cloudflare = mkIf (cfg.cloudflare.apiTokenFile != null) {
          apiTokenFile = cfg.cloudflare.apiTokenFile;
        };
        cilium = mkIf (cfg.charts.cilium != null) { chart.path = "${cfg.charts.cilium}"; };
        argocd = mkIf (cfg.charts.argocd != null) { chart.path = "${cfg.charts.argocd}"; };
      };

      assertions = [
        {
          # tryEval: an unset required option throws; this turns that into the message below.
          assertion =
            cfg.settings.cloudflare != null
            -> (builtins.tryEval cfg.settings.cloudflare.apiTokenFile).success;
          message = "services.homelab-bootstrap: settings.cloudflare is set, so set services.homelab-bootstrap.cloudflare.apiTokenFile too.";
        }
      ]
      ++ map
        (name: {
          assertion =
            cfg.charts.${name} != null
            -> (cfg.settings.${name}.chart or null) == { path = "${cfg.charts.${name}}"; };
          message = "services.homelab-bootstrap: set either charts.${name} or settings.${name}.chart, not both.";
        })
        [
          "cilium"
          "argocd"
        ];

      # Type=exec, not oneshot: `nixos-rebuild switch` waits for the start job of every unit
      # it (re)starts, and a oneshot's start job lasts the whole bootstrap (minutes; forever
      # while k3s is down). An exec unit's start job ends once the daemon runs, so the switch
      # returns at once. RemainAfterExit keeps the unit active after success, so the switch
      # sees a changed unit (new settings file = new ExecStart) as active and restarts it: a
      # settings change re-runs the bootstrap, an unchanged one does not.
      systemd.services.homelab-bootstrap = {
        description = "Bootstrap the k3s homelab: Cilium, Argo CD, age key, Cloudflare, root ApplicationSet";
        wantedBy = [ "multi-user.target" ];
        wants = dependencies;
        after = dependencies;
        inherit environment;
        restartIfChanged = true;
        # Keep retrying while k3s or Cloudflare are down; the delay below is what is bounded.
        startLimitIntervalSec = 0;
        serviceConfig = hardening // {
          Type = "exec";
          RemainAfterExit = true;
          ExecStart = "${exe} apply --config ${settingsFile}${logArgs}";
          # 10 s, growing over 6 attempts to at most 5 min between attempts.
          Restart = "on-failure";
          RestartSec = "10s";
          RestartSteps = 6;
          RestartMaxDelaySec = "5min";
        };
      };
    }

    (mkIf cfg.reconcile.enable {
      # A separate unit: a timer cannot re-start the main unit, which stays active after
      # success. Started only by its timer, so a switch never starts or waits for it.
      systemd.services.homelab-bootstrap-reconcile = {
        description = "Re-run the homelab-bootstrap Cloudflare steps (${lib.concatStringsSep ", " cfg.reconcile.steps})";
        wants = [ "network-online.target" ];
        after = [
          "network-online.target"
          "homelab-bootstrap.service"
        ];
        inherit environment;
        restartIfChanged = false;
        serviceConfig = hardening // {
          Type = "oneshot";
          ExecStart = "${exe} apply --config ${settingsFile}${
            lib.concatMapStrings (s: " --only ${s}") cfg.reconcile.steps
          }${logArgs}";
          # Another run holds the lock: the main unit is converging everything right now.
          SuccessExitStatus = [ contract.lockedExitStatus ];
          TimeoutStartSec = "15min";
        };
      };
      systemd.timers.homelab-bootstrap-reconcile = {
        description = "Periodic homelab-bootstrap Cloudflare reconcile";
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnBootSec = cfg.reconcile.interval;
          OnUnitInactiveSec = cfg.reconcile.interval;
          RandomizedDelaySec = "1min";
        };
      };
    })

    (mkIf cfg.k3s.configure {
      services.k3s = {
        enable = mkDefault true;
        role = mkDefault "server";
        extraFlags = [
          "--flannel-backend=none"
          "--disable-network-policy"
          "--disable-kube-proxy"
        ];
        disable = [
          "servicelb"
          "traefik"
        ];
      };

      networking.firewall = {
        checkReversePath = mkDefault "loose";
        allowedTCPPorts = mkIf cfg.k3s.openFirewall k3sTCPPorts;
        allowedUDPPorts = mkIf cfg.k3s.openFirewall k3sUDPPorts;
      };

      # Cilium's agent runs in a container and cannot modprobe on NixOS (no /lib/modules);
      # without these its proxy and masquerading rules silently go missing.
      boot.kernelModules = [
        "ip_tables"
        "ip6_tables"
        "iptable_filter"
        "iptable_nat"
        "iptable_mangle"
        "iptable_raw"
        "xt_socket"
      ];

      assertions = [
        {
          assertion = config.services.k3s.enable;
          message = "services.homelab-bootstrap.k3s.configure needs services.k3s.enable; set k3s.configure = false when k3s runs elsewhere.";
        }
        {
          assertion = config.services.k3s.role == "server";
          message = "services.homelab-bootstrap needs a k3s server on this host (services.k3s.role = \"server\"): only servers write ${cfg.kubeconfigFile}.";
        }
        {
          assertion = lib.all (v: v == "none") (flagValues "--flannel-backend");
          message = "services.k3s.extraFlags sets --flannel-backend=${
            lib.concatStringsSep "," (lib.filter (v: v != "none") (flagValues "--flannel-backend"))
          }: flannel would fight Cilium, the cluster's CNI. Remove it (homelab-bootstrap sets --flannel-backend=none).";
        }
        {
          assertion = !lib.any isFalse (boolFlagValues "--disable-kube-proxy");
          message = "services.k3s.extraFlags re-enables kube-proxy (--disable-kube-proxy=false), but Cilium runs with kubeProxyReplacement: the two would both program services.";
        }
        {
          assertion = !hasFlag "--kube-proxy-arg" && (config.services.k3s.extraKubeProxyConfig or { }) == { };
          message = "kube-proxy is disabled (Cilium replaces it): remove --kube-proxy-arg from services.k3s.extraFlags and services.k3s.extraKubeProxyConfig.";
        }
        {
          assertion = !lib.any isFalse (boolFlagValues "--disable-network-policy");
          message = "services.k3s.extraFlags re-enables k3s' network policy controller (--disable-network-policy=false); Cilium enforces network policy.";
        }
        {
          assertion = lib.all (m: lib.elem m [ "600" "0600" "400" "0400" ]) (flagValues "--write-kubeconfig-mode");
          message = "services.k3s.extraFlags sets --write-kubeconfig-mode=${lib.concatStringsSep "," (flagValues "--write-kubeconfig-mode")}: the admin kubeconfig must stay root-only (homelab-bootstrap reads it through LoadCredential=, so it needs no wider mode).";
        }
        {
          assertion = !hasFlag "--write-kubeconfig-group";
          message = "services.k3s.extraFlags sets --write-kubeconfig-group: the admin kubeconfig must stay root-only.";
        }
        {
          assertion = !lib.elem config.networking.firewall.checkReversePath [
            true
            "strict"
          ];
          message = "networking.firewall.checkReversePath is strict, which drops Cilium's traffic; homelab-bootstrap sets it to \"loose\".";
        }
      ];

      warnings = lib.optional (!config.networking.firewall.enable) ''
        networking.firewall.enable is false. homelab-bootstrap opens the ports k3s and Cilium
        need (services.homelab-bootstrap.k3s.openFirewall) and sets checkReversePath = "loose";
        the firewall can stay on.
      '';
    })
  ]);
}

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
  policy = import ./host-policy.nix;
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

  # Each unit gets only the credentials its steps read (see host-policy.nix).
  credentials = policy.credentials settingsValue;

  exe = lib.getExe cfg.package;
  logArgs = lib.optionalString (cfg.logLevel != null) " --log-level ${cfg.logLevel}";

  k3sEnabled = config.services.k3s.enable or false;
  # sops-nix runs sops-install-secrets.service only on sysusers/userborn systems (elsewhere it
  # is an activation script, done before any unit starts). Ordering after a unit that does not
  # exist is harmless, so it is listed unconditionally: asking whether it exists would force
  # the names of every systemd.services definition, and any of them depending on this unit
  # would recurse.
  dependencies = [ "network-online.target" ] ++ lib.optional k3sEnabled "k3s.service";
  after = dependencies ++ [ "sops-install-secrets.service" ];

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

  k3s = config.services.k3s;
  # The flags homelab-bootstrap needs, as k3s config keys. They go into a config drop-in, not
  # into services.k3s.extraFlags: that option is a string or a list, and a list added here
  # cannot merge with the string most configurations use (nixpkgs' error names neither side).
  # k3s reads <config>.d/*.yaml after <config>, and command-line flags last, so the user's
  # extraFlags still win (the assertions below catch the contradicting ones).
  k3sFlags = {
    flannel-backend = "none";
    disable-network-policy = true;
    disable-kube-proxy = true;
  }
  // lib.optionalAttrs (cfg.k3s.localStoragePath != null) {
    # k3s' local-path-provisioner only places volumes under paths of its own config, and k3s
    # writes just this one there: the GitOps tree's StorageClasses put each app's config at
    # <path>/<app>, where the configs of the old setup already are.
    default-local-storage-path = cfg.k3s.localStoragePath;
  };
  # Without --config (services.k3s.configPath), k3s reads /etc/rancher/k3s/config.yaml.d/.
  # With one, it reads that file's .d directory, which the module can only fill when it is
  # under /etc; anywhere else (the store) the flags go on the command line instead. A path
  # literal (/etc/k3s.yaml without quotes) is in the store too: nixpkgs' k3s module passes
  # `--config ${configPath}`, which copies it there, so k3s would look for <store path>.d.
  k3sConfigPath = k3s.configPath or null;
  k3sConfigIsPathLiteral = builtins.isPath k3sConfigPath;
  k3sDropInDir =
    if k3sConfigPath == null then
      "rancher/k3s/config.yaml.d"
    else if !k3sConfigIsPathLiteral && lib.hasPrefix "/etc/" k3sConfigPath then
      "${lib.removePrefix "/etc/" k3sConfigPath}.d"
    else
      null;
  # JSON is YAML; k3s reads `key: value` pairs as `--key=value`.
  k3sDropInText = builtins.toJSON k3sFlags;
  k3sFlagsAsArgs = lib.mapAttrsToList (
    k: v: if v == true then "--${k}" else "--${k}=${toString v}"
  ) k3sFlags;

  # The user's k3s flags, split into words whether extraFlags is a string or a list. Read from
  # the option's definitions, not its merged value: with a string and a list both defined the
  # merged value is a type error, and the assertion that explains it must be able to run.
  k3sFlagDefinitions = options.services.k3s.extraFlags.definitions or [ ];
  k3sTokens = lib.concatMap (
    s: lib.filter (w: builtins.isString w && w != "") (builtins.split "[[:space:]]+" s)
  ) (lib.flatten k3sFlagDefinitions);
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

  # The pod network: k3s' --cluster-cidr (Cilium takes each node's podCIDR from it, ipam
  # mode "kubernetes"), default 10.42.0.0/16.
  clusterCIDRs =
    let
      given = flagValues "--cluster-cidr";
    in
    if given == [ ] then policy.defaultPodCIDRs else lib.splitString "," (lib.last given);

  # Firewall, least privilege. See the openFirewall option for who needs each port.
  fwCfg = cfg.k3s.firewall;
  nftables = config.networking.nftables.enable or false;
  firewallBackend =
    config.networking.firewall.backend or (if nftables then "nftables" else "iptables");
  firewallPolicy = policy.firewall { inherit (fwCfg) apiFromLAN multiNode podCIDRs; };

  # Kernel modules Cilium's agent expects loaded: it runs in a container and cannot modprobe
  # on NixOS (no /lib/modules there), and without them its proxy and masquerading rules go
  # missing. Cilium's image picks iptables-legacy or iptables-nft to match the host's rules.
  # xt_socket (transparent proxy, both modes) is always loaded; the legacy tables only when
  # nftables is off (NixOS' nftables module blacklists ip_tables); with nftables, the nf_tables
  # core and nft_compat, through which iptables-nft runs Cilium's xt matches.
  ciliumKernelModules =
    [ "xt_socket" ]
    ++ (
      if nftables then
        [
          "nf_tables"
          "nft_compat"
        ]
      else
        [
          "ip_tables"
          "ip6_tables"
          "iptable_filter"
          "iptable_nat"
          "iptable_mangle"
          "iptable_raw"
        ]
    );
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
        (`kubeconfigFile`, `sops.ageKeyFile`, `cloudflare.apiTokenFile`,
        `gitops.repoCredentialFile`) hold paths and are set from
        [](#opt-services.homelab-bootstrap.kubeconfigFile),
        [](#opt-services.homelab-bootstrap.ageKeyFile),
        [](#opt-services.homelab-bootstrap.cloudflare.apiTokenFile) and
        [](#opt-services.homelab-bootstrap.gitops.repoCredentialFile).
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
      type = types.nullOr secretPath;
      # With sops-nix imported its key is the default, also when it is null (SSH host keys
      # only): falling back to a file nobody wrote would fail every start; the assertion below
      # says what to set instead.
      default = if sopsImported then config.sops.age.keyFile else "/var/lib/sops-nix/keys.txt";
      defaultText = literalMD "`config.sops.age.keyFile` when sops-nix is imported, else `\"/var/lib/sops-nix/keys.txt\"`";
      example = "/var/lib/sops-nix/key.txt";
      description = ''
        The host's age identity, stored in the cluster as Secret `argocd/sops-age-key` so
        ksops can decrypt the GitOps tree. Passed with `LoadCredential=`, to the main unit only.
        Required: with sops-nix decrypting through SSH host keys only
        (`sops.age.keyFile = null`) there is no age key file to default to.
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

    gitops.repoCredentialFile = mkOption {
      type = types.nullOr secretPath;
      default = null;
      example = "/run/secrets/gitops-repo-token";
      description = ''
        File holding the credential for a private `settings.gitops.repoURL`: an HTTPS token
        (with `settings.gitops.repoUsername`, default `git`) or an SSH private key, for example
        a sops-nix secret's `path`. The daemon turns it into Argo CD's repository Secret; it
        never enters the store. Sets `settings.gitops.repoCredentialFile`. Passed with
        `LoadCredential=`, to the main unit only.
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
        # Only these: the reconcile unit holds just the credentials they read (the other steps
        # need the age key); restart homelab-bootstrap.service to re-run everything.
        type = types.listOf (types.enum contract.reconcileSteps);
        default = contract.reconcileSteps;
        description = "Steps the timer re-runs (`apply --only …`): the tunnel, DNS or both.";
      };
    };

    k3s = {
      configure = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Enable a k3s server configured for Cilium: `flannel-backend: none`,
          `disable-network-policy`, `disable-kube-proxy` (Cilium replaces kube-proxy) in the
          config drop-in `/etc/rancher/k3s/config.yaml.d/50-homelab-bootstrap.yaml` (so
          `services.k3s.extraFlags` can be a string or a list), `servicelb` and `traefik`
          disabled (Cilium announces LoadBalancer IPs and serves Ingress), the kubeconfig left
          root-only, the firewall's reverse-path filter set to `loose` (strict drops Cilium's
          traffic) unless the kernel has no rpfilter support, and the kernel modules Cilium's
          iptables rules use loaded (the legacy `ip_tables` family only without nftables).
          Contradicting k3s flags fail evaluation. Turn off when k3s is managed elsewhere.
        '';
      };
      localStoragePath = mkOption {
        type = types.nullOr types.str;
        default = "/var/data/configs";
        description = ''
          k3s' `default-local-storage-path`: where local-path-provisioner creates volumes. The
          GitOps tree's StorageClasses (`manifests/argocd-homelab/infra/storage`) put each app's
          config at `<path>/<app>` and monitoring data under `<path>/monitoring`, so configs kept
          on the data disk survive a wipe of k3s and are used as they are. `null` keeps k3s'
          default (`/var/lib/rancher/k3s/storage`).
        '';
      };
      openFirewall = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Open what one k3s server with Cilium needs, and no more; the firewall stays on.
          On by default, unlike nixpkgs' `openFirewall` options: the host exists to serve the
          cluster's Ingress, and with the firewall closed every L2-announced service is
          unreachable from the LAN and Cilium's health checks and the pods' API and metrics
          traffic to the host are dropped, a broken cluster rather than a safer one. What it
          opens to the LAN by default is only TCP 80 and 443; everything else is limited to the
          pod network or opt-in. Set it to `false` to manage these rules yourself.
          From everywhere (the LAN):
          - TCP 80, 443: Cilium's shared Ingress on the L2-announced VIP; its Envoy receives
            the connections in the host's network stack, so the host's firewall sees them.
          - TCP 6443 (Kubernetes API) only with `k3s.firewall.apiFromLAN` (kubectl from another
            machine) or `k3s.firewall.multiNode`.
          From the pod network only (`k3s.firewall.podCIDRs`), as these serve pods on the host:
          - TCP 6443: in-cluster clients (Argo CD, the kubernetes Service) reach the API there.
          - TCP 10250: kubelet, read by metrics-server and Prometheus.
          - TCP 4240: cilium-health probes from the health endpoint.
          - TCP 4244: the Hubble server, read by hubble-relay.
          - TCP 9100: node-exporter (host network), scraped by Prometheus.
          - TCP 9962, 9963, 9964: cilium-agent, cilium-operator and cilium-envoy metrics.
          - TCP 9965: Hubble metrics.
          The metrics ports are unauthenticated, so they are never open to the LAN.
          With `k3s.firewall.multiNode`, also from the LAN: TCP 6443 (joining nodes), 10250
          (the API server on another node reaching this kubelet), 4240 (health between nodes),
          UDP 8472 (Cilium's VXLAN between nodes).
          Works with the iptables and the nftables firewall (not firewalld).
        '';
      };
      firewall = {
        apiFromLAN = mkOption {
          type = types.bool;
          default = false;
          description = ''
            Open the Kubernetes API (TCP 6443) to the LAN, for kubectl from another machine.
            Off by default: the admin kubeconfig stays on the host, where kubectl works
            locally (or through `ssh -L 6443:127.0.0.1:6443`).
          '';
        };
        multiNode = mkOption {
          type = types.bool;
          default = false;
          description = ''
            Open what other k3s nodes need from this server: TCP 6443, 10250, 4240 and UDP 8472
            (VXLAN) from the LAN. Embedded etcd between servers (TCP 2379-2380) is not opened;
            add it to `networking.firewall` when running several servers.
          '';
        };
        podCIDRs = mkOption {
          type = types.listOf types.str;
          default = clusterCIDRs;
          defaultText = literalMD "the `--cluster-cidr` of `services.k3s.extraFlags`, else `[ \"10.42.0.0/16\" ]` (k3s' default)";
          example = [ "10.42.0.0/16" ];
          description = ''
            The pod network, the only source allowed to reach the host's metrics, kubelet and
            Hubble ports. The default is read from `--cluster-cidr` in `services.k3s.extraFlags`
            only: a `cluster-cidr` in your own k3s config file (`services.k3s.configPath`) or a
            `K3S_CLUSTER_CIDR` in `services.k3s.environmentFile` is not seen, and the pods'
            traffic to those ports is then dropped. In that case set this option to the same
            CIDRs (every one of a dual-stack cluster).
          '';
        };
      };
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      services.homelab-bootstrap.settings = {
        kubeconfigFile = cfg.kubeconfigFile;
        sops.ageKeyFile = mkIf (cfg.ageKeyFile != null) cfg.ageKeyFile;
        cloudflare = mkIf (cfg.cloudflare.apiTokenFile != null) {
          apiTokenFile = cfg.cloudflare.apiTokenFile;
        };
        gitops = mkIf (cfg.gitops.repoCredentialFile != null) {
          repoCredentialFile = cfg.gitops.repoCredentialFile;
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
        {
          assertion = cfg.ageKeyFile != null;
          message = ''
            services.homelab-bootstrap: no age key file. sops-nix is imported with sops.age.keyFile = null
            (it decrypts with the SSH host keys only), so there is no age identity to hand to ksops.
            Set services.homelab-bootstrap.ageKeyFile to the file holding the age identity the GitOps
            tree is encrypted to (for example a sops-nix secret's path), or set sops.age.keyFile.'';
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
        inherit after environment;
        restartIfChanged = true;
        # Keep retrying while k3s or Cloudflare are down; the delay below is what is bounded.
        startLimitIntervalSec = 0;
        serviceConfig = hardening // {
          Type = "exec";
          RemainAfterExit = true;
          ExecStart = "${exe} apply --config ${settingsFile}${logArgs}";
          # Every step runs here, so every credential that is set.
          LoadCredential = credentials.main;
          # Converged, except DNS conflicts the daemon reported and leaves to the user: retrying
          # would change nothing, so it is no failure (the reconcile timer reports it again).
          SuccessExitStatus = [ contract.dnsConflictsExitStatus ];
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
          "sops-install-secrets.service"
        ];
        inherit environment;
        restartIfChanged = false;
        serviceConfig = hardening // {
          Type = "oneshot";
          ExecStart = "${exe} apply --config ${settingsFile}${
            lib.concatMapStrings (s: " --only ${s}") cfg.reconcile.steps
          }${logArgs}";
          # Only what the tunnel and DNS steps read: not the age key, not the git credential.
          LoadCredential = credentials.reconcile;
          SuccessExitStatus = [
            # Another run holds the lock: the main unit is converging everything right now.
            contract.lockedExitStatus
            # Converged, except DNS conflicts the daemon reported and leaves to the user.
            contract.dnsConflictsExitStatus
          ];
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
        # Command-line flags only when no config drop-in can carry them (see k3sDropInDir).
        extraFlags = mkIf (k3sDropInDir == null) k3sFlagsAsArgs;
        disable = [
          "servicelb"
          "traefik"
        ];
      };
      environment.etc = mkIf (k3sDropInDir != null) {
        "${k3sDropInDir}/50-homelab-bootstrap.yaml".text = k3sDropInText;
      };
      # A changed /etc file restarts no unit: without this, a new drop-in (another
      # localStoragePath, say) would reach k3s only at the next reboot. Flags on the command
      # line need nothing: they change k3s' ExecStart, which restarts it.
      systemd.services.k3s.restartTriggers = mkIf (k3sDropInDir != null) [ k3sDropInText ];

      networking.firewall = mkMerge [
        {
          # Below mkDefault (1000), above the option default: the firewall module's own
          # `mkDefault false` on kernels without rpfilter support wins (no reverse-path filter at
          # all suits Cilium too), and so does any value the user sets.
          checkReversePath = lib.mkOverride 1100 "loose";
        }
        (mkIf cfg.k3s.openFirewall {
          allowedTCPPorts = firewallPolicy.lanTCPPorts;
          allowedUDPPorts = firewallPolicy.lanUDPPorts;
          extraCommands = mkIf (firewallBackend == "iptables") firewallPolicy.iptablesRules;
          extraInputRules = mkIf (firewallBackend == "nftables") firewallPolicy.nftablesRules;
        })
      ];

      boot.kernelModules = ciliumKernelModules;

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
          assertion = k3sDropInDir == null -> !lib.any builtins.isString k3sFlagDefinitions;
          message = "services.k3s.extraFlags is a string, and services.k3s.configPath (${
            if k3sConfigIsPathLiteral then
              "the path literal ${toString k3sConfigPath}, which nixpkgs' k3s module copies into the Nix store"
            else
              toString k3sConfigPath
          }) is not a string under /etc, so homelab-bootstrap cannot put its flags into a config drop-in and must add them to extraFlags as a list, which does not merge with a string. Write services.k3s.extraFlags as a list (one flag per element), or set configPath to a string under /etc${
            lib.optionalString k3sConfigIsPathLiteral " (in quotes: \"${toString k3sConfigPath}\")"
          }.";
        }
        {
          assertion = lib.all (v: v == "none") (flagValues "--flannel-backend");
          message = "services.k3s.extraFlags sets --flannel-backend=${
            lib.concatStringsSep "," (lib.filter (v: v != "none") (flagValues "--flannel-backend"))
          }: flannel would fight Cilium, the cluster's CNI. Remove it (homelab-bootstrap sets flannel-backend: none).";
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
        {
          assertion = cfg.k3s.openFirewall && config.networking.firewall.enable -> firewallBackend != "firewalld";
          message = "services.homelab-bootstrap.k3s.openFirewall supports the iptables and nftables firewalls, not firewalld: set it to false and open the ports its description lists in firewalld.";
        }
      ];

      warnings =
        lib.optional (!config.networking.firewall.enable) ''
          networking.firewall.enable is false. homelab-bootstrap opens the ports k3s and Cilium
          need (services.homelab-bootstrap.k3s.openFirewall) and sets checkReversePath = "loose";
          the firewall can stay on.
        ''
        ++ lib.optional (nftables && (config.networking.nftables.flushRuleset or false)) ''
          networking.nftables.flushRuleset is true: every reload of nftables.service deletes the
          rules Cilium and the kubelet installed, cutting the cluster's traffic until they
          re-create them. Set networking.nftables.flushRuleset = false (the default since 23.11
          unless networking.nftables.ruleset is set; put custom rules in networking.nftables.tables).
        '';
    })
  ]);
}

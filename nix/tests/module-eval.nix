# Evaluates nix/module.nix with nixpkgs' real module system (`lib` only: no nixpkgs
# packages, no builds) against a stand-in for the few NixOS options it touches, in several
# scenarios, and reports what each produced. It runs where only `lib` is at hand:
#
#   nix-instantiate --eval --strict --json nix/tests/module-eval.nix --arg lib 'import <nixpkgs/lib>'
#
# test/unit/nix-contract.test.ts runs it when NIXPKGS_LIB points at a nixpkgs `lib` directory
# and checks the report (the settings JSON against the daemon's parser, the unit, the k3s
# flags, which assertions fire). The flake's `checks.module-eval` is the same idea in a real
# NixOS system.
{
  lib,
  # A file holding the configuration.nix of docs/nixos.md, to evaluate it too.
  docsConfig ? null,
}:
let
  inherit (lib) mkOption types;

  fakeDrv = name: extra: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  } // extra;

  # pkgs.formats.json's type, as nixpkgs defines it.
  jsonValue =
    with types;
    let
      valueType =
        nullOr (oneOf [
          bool
          int
          float
          str
          path
          (attrsOf valueType)
          (listOf valueType)
        ])
        // {
          description = "JSON value";
        };
    in
    valueType;

  pkgs = {
    formats.json = _: {
      type = jsonValue;
      generate = name: value: builtins.toFile name (builtins.toJSON value);
    };
    runCommand = name: _env: _script: fakeDrv name { };
    callPackage = _: _: fakeDrv "homelab-bootstrap-0.1.0" { meta.mainProgram = "homelab-bootstrap"; };
  };

  unitType = types.attrsOf (
    types.submodule {
      freeformType = types.attrsOf types.anything;
      options = {
        wantedBy = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        wants = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        after = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        serviceConfig = mkOption {
          type = types.attrsOf types.anything;
          default = { };
        };
        restartTriggers = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
      };
    }
  );

  # The NixOS options module.nix reads or writes, with nixpkgs' types where merging matters
  # (nixos/modules/services/cluster/rancher, networking/firewall*.nix, nftables.nix), and the
  # parts of those modules' behaviour that meet module.nix's definitions.
  nixosStub =
    { config, ... }:
    let
      fw = config.networking.firewall;
    in
    {
      options = {
        assertions = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
        };
        warnings = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        services.k3s = {
          enable = mkOption {
            type = types.bool;
            default = false;
          };
          role = mkOption {
            type = types.enum [
              "server"
              "agent"
            ];
            default = "server";
          };
          extraFlags = mkOption {
            type = with types; either str (listOf str);
            default = [ ];
          };
          configPath = mkOption {
            type = types.nullOr types.path;
            default = null;
          };
          disable = mkOption {
            type = types.listOf types.str;
            default = [ ];
          };
          extraKubeProxyConfig = mkOption {
            type = types.attrsOf types.anything;
            default = { };
          };
        };
        environment.etc = mkOption {
          type = types.attrsOf (
            types.submodule {
              options.text = mkOption {
                type = types.nullOr types.lines;
                default = null;
              };
            }
          );
          default = { };
        };
        networking.nftables = {
          enable = mkOption {
            type = types.bool;
            default = false;
          };
          flushRuleset = mkOption {
            type = types.bool;
            default = false;
          };
        };
        networking.firewall = {
          enable = mkOption {
            type = types.bool;
            default = true;
          };
          backend = mkOption {
            type = types.enum [
              "iptables"
              "nftables"
              "firewalld"
            ];
            default = if config.networking.nftables.enable then "nftables" else "iptables";
          };
          extraCommands = mkOption {
            type = types.lines;
            default = "";
          };
          extraInputRules = mkOption {
            type = types.lines;
            default = "";
          };
          checkReversePath = mkOption {
            type = types.either types.bool (
              types.enum [
                "strict"
                "loose"
              ]
            );
            default = true;
          };
          allowedTCPPorts = mkOption {
            type = types.listOf types.port;
            default = [ ];
          };
          allowedUDPPorts = mkOption {
            type = types.listOf types.port;
            default = [ ];
          };
        };
        boot.kernelModules = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        boot.blacklistedKernelModules = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        systemd.services = mkOption {
          type = unitType;
          default = { };
        };
        systemd.timers = mkOption {
          type = unitType;
          default = { };
        };
      };
      config = lib.mkMerge [
        # nftables.nix
        (lib.mkIf config.networking.nftables.enable { boot.blacklistedKernelModules = [ "ip_tables" ]; })
        # firewall-nftables.nix
        (lib.mkIf (fw.enable && fw.backend == "nftables") {
          assertions = [
            {
              assertion = fw.extraCommands == "";
              message = "extraCommands is incompatible with the nftables based firewall: ${fw.extraCommands}";
            }
          ];
        })
      ];
    };

  # firewall-iptables.nix on a kernel without rpfilter support.
  kernelWithoutRPFilter = {
    networking.firewall.checkReversePath = lib.mkDefault false;
  };

  # The sops-nix options module.nix and docs/nixos.md use.
  sopsOptions = {
    options.sops = {
      age.keyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      defaultSopsFile = mkOption {
        type = types.path;
      };
      secrets = mkOption {
        type = types.attrsOf (
          types.submodule (
            { name, ... }:
            {
              options.path = mkOption {
                type = types.str;
                default = "/run/secrets/${name}";
              };
              options.restartUnits = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
            }
          )
        );
        default = { };
      };
    };
  };

  # sops-nix imported with a key and running as a unit (sysusers/userborn systems).
  sopsStub = {
    imports = [ sopsOptions ];
    config = {
      sops.age.keyFile = "/var/lib/sops-nix/key.txt";
      systemd.services.sops-install-secrets.serviceConfig.Type = "oneshot";
    };
  };

  # SPEC.md's homelab as docs/nixos.md configures it; the stand-in pkgs cannot run the daemon,
  # so the build-time validation is off here (the contract test runs the daemon's parser on
  # the JSON instead).
  homelab = {
    imports = [ ./homelab.nix ];
    services.homelab-bootstrap.checkSettings = false;
  };

  eval =
    modules:
    lib.evalModules {
      modules = [
        ../module.nix
        nixosStub
        { _module.args.pkgs = pkgs; }
      ]
      ++ modules;
    };

  failedAssertions =
    config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

  dropInPath = "rancher/k3s/config.yaml.d/50-homelab-bootstrap.yaml";
  # What a scenario produced, where the tests look.
  details =
    c:
    let
      units = c.systemd.services;
    in
    {
      k3sExtraFlags = c.services.k3s.extraFlags;
      k3sDropIns = lib.mapAttrs (_: f: f.text) (
        lib.filterAttrs (n: _: lib.hasSuffix ".d/50-homelab-bootstrap.yaml" n) c.environment.etc
      );
      k3sRestartTriggers = units.k3s.restartTriggers or [ ];
      firewall = {
        inherit (c.networking.firewall)
          checkReversePath
          allowedTCPPorts
          allowedUDPPorts
          extraCommands
          extraInputRules
          ;
      };
      inherit (c.boot) kernelModules blacklistedKernelModules;
      mainCredentials = units.homelab-bootstrap.serviceConfig.LoadCredential;
      reconcileCredentials = units.homelab-bootstrap-reconcile.serviceConfig.LoadCredential or null;
      settingsJSON = builtins.toJSON (
        (import ../settings-options.nix {
          inherit lib;
          jsonType = jsonValue;
        }).clean
          c.services.homelab-bootstrap.settings
      );
    };

  # Forces what a NixOS build forces, in its order: the assertions first (a failed one stops
  # the build with its message), then the unit. A type error or an undefined required option
  # throws, which shows as `evaluates = false`.
  tryReport =
    modules:
    let
      c = (eval modules).config;
      checked = builtins.tryEval (builtins.deepSeq (failedAssertions c) (failedAssertions c));
      unit = builtins.tryEval (
        builtins.deepSeq [
          c.systemd.services.homelab-bootstrap.serviceConfig
          c.warnings
          (details c)
        ] true
      );
    in
    if !checked.success then
      {
        evaluates = false;
        failed = [ ];
        warnings = [ ];
        details = null;
      }
    else if checked.value != [ ] then
      {
        evaluates = true;
        failed = checked.value;
        warnings = [ ];
        details = null;
      }
    else
      {
        evaluates = unit.success;
        failed = [ ];
        warnings = if unit.success then c.warnings else [ ];
        details = if unit.success then details c else null;
      };

  base = eval [ homelab ];
  c = base.config;
  svc = c.systemd.services.homelab-bootstrap;
  reconcile = c.systemd.services.homelab-bootstrap-reconcile;
  withSops = (eval [ homelab sopsStub ]).config;

  # The main unit's `after`, read from this module's own definition of systemd.services while
  # another definition's condition throws if evaluated: ordering after sops-nix must not need
  # the names of every unit (that would force the condition, and recurse where it depends on
  # this module).
  orderingWithoutUnitNames =
    let
      e = eval [
        homelab
        { systemd.services.poison = lib.mkIf (throw "the names of systemd.services were forced") { }; }
      ];
      ours = lib.findFirst (d: d ? homelab-bootstrap) null e.options.systemd.services.definitions;
      after = builtins.tryEval (builtins.deepSeq ours.homelab-bootstrap.after ours.homelab-bootstrap.after);
    in
    {
      evaluates = after.success;
      after = if after.success then after.value else null;
    };
in
{
  homelab = {
    failed = failedAssertions c;
    inherit (c) warnings;
    # The JSON the module writes (`nix-instantiate --eval` cannot write files, so this is the
    # module's own `clean` applied again rather than the generated file).
    inherit (details c)
      settingsJSON
      k3sDropIns
      k3sRestartTriggers
      kernelModules
      blacklistedKernelModules
      ;
    unit = {
      inherit (svc) wantedBy wants after;
      inherit (svc.serviceConfig)
        Type
        RemainAfterExit
        Restart
        SuccessExitStatus
        LoadCredential
        ExecStart
        DynamicUser
        StateDirectory
        SystemCallFilter
        CapabilityBoundingSet
        ;
      restartIfChanged = svc.restartIfChanged;
    };
    reconcile = {
      inherit (reconcile.serviceConfig)
        Type
        ExecStart
        SuccessExitStatus
        LoadCredential
        ;
      inherit (reconcile) after;
      restartIfChanged = reconcile.restartIfChanged;
      timer = c.systemd.timers.homelab-bootstrap-reconcile.timerConfig;
    };
    k3s = {
      inherit (c.services.k3s)
        enable
        role
        extraFlags
        disable
        ;
    };
    firewall = {
      inherit (c.networking.firewall)
        enable
        checkReversePath
        allowedTCPPorts
        allowedUDPPorts
        extraCommands
        extraInputRules
        ;
    };
  };

  docs =
    if docsConfig == null then
      null
    else
      let
        d = (eval [
          sopsOptions
          (import docsConfig)
          { services.homelab-bootstrap.checkSettings = false; }
        ]).config;
      in
      {
        failed = failedAssertions d;
        inherit (d) warnings;
        inherit (details d) settingsJSON;
        inherit (d.systemd.services.homelab-bootstrap.serviceConfig) LoadCredential;
      };

  sops = {
    ageKeyFile = withSops.services.homelab-bootstrap.ageKeyFile;
    after = withSops.systemd.services.homelab-bootstrap.after;
    LoadCredential = withSops.systemd.services.homelab-bootstrap.serviceConfig.LoadCredential;
  };

  inherit orderingWithoutUnitNames;

  # Each scenario fails evaluation or an assertion, or evaluates; the test checks which, and
  # what the evaluating ones produced (`details`).
  scenarios = {
    flannelReEnabled = tryReport [
      homelab
      { services.k3s.extraFlags = [ "--flannel-backend=vxlan" ]; }
    ];
    flannelAsTwoWords = tryReport [
      homelab
      { services.k3s.extraFlags = [ "--flannel-backend" "host-gw" ]; }
    ];
    flannelInAString = tryReport [
      homelab
      { services.k3s.extraFlags = "--node-ip=192.168.0.10 --flannel-backend=vxlan"; }
    ];
    kubeProxyReEnabled = tryReport [
      homelab
      { services.k3s.extraFlags = [ "--disable-kube-proxy=false" ]; }
    ];
    kubeProxyConfigured = tryReport [
      homelab
      { services.k3s.extraKubeProxyConfig.mode = "nftables"; }
    ];
    networkPolicyReEnabled = tryReport [
      homelab
      { services.k3s.extraFlags = [ "--disable-network-policy=false" ]; }
    ];
    worldReadableKubeconfig = tryReport [
      homelab
      { services.k3s.extraFlags = [ "--write-kubeconfig-mode=644" ]; }
    ];
    strictReversePath = tryReport [
      homelab
      { networking.firewall.checkReversePath = true; }
    ];
    agentRole = tryReport [
      homelab
      { services.k3s.role = "agent"; }
    ];
    firewallOff = tryReport [
      homelab
      { networking.firewall.enable = false; }
    ];
    firewalld = tryReport [
      homelab
      { networking.firewall.backend = "firewalld"; }
    ];
    chartTwice = tryReport [
      homelab
      {
        services.homelab-bootstrap.charts.cilium = fakeDrv "cilium-1.18.4.tgz" { };
        services.homelab-bootstrap.settings.cilium.chart = {
          repo = "https://helm.cilium.io";
          chart = "cilium";
          version = "1.18.4";
        };
      }
    ];
    cloudflareWithoutToken = tryReport [
      homelab
      { services.homelab-bootstrap.cloudflare.apiTokenFile = lib.mkForce null; }
    ];
    # sops-nix decrypting with the SSH host keys only: its default, sops.age.keyFile = null.
    sopsSSHKeysOnly = tryReport [
      homelab
      sopsOptions
    ];
    keyInStore = tryReport [
      homelab
      { services.homelab-bootstrap.ageKeyFile = "${builtins.storeDir}/abc-keys.txt"; }
    ];
    keyAsPathLiteral = tryReport [
      homelab
      { services.homelab-bootstrap.kubeconfigFile = /etc/hostname; }
    ];
    conflictingCredentialPath = tryReport [
      homelab
      { services.homelab-bootstrap.settings.kubeconfigFile = "/root/other.yaml"; }
    ];
    missingDomain = tryReport [
      homelab
      { services.homelab-bootstrap.settings.domain = lib.mkForce null; }
    ];
    reconcileAllSteps = tryReport [
      homelab
      { services.homelab-bootstrap.reconcile.steps = [ "tunnel" "dns" "argocd" ]; }
    ];
    # k3s reads drop-ins from <configPath>.d: outside /etc the flags must go on the command
    # line, where a string cannot take them.
    stringFlagsWithStoreConfig = tryReport [
      homelab
      {
        services.k3s.configPath = "${builtins.storeDir}/abc-k3s.yaml";
        services.k3s.extraFlags = "--node-ip=192.168.0.10";
      }
    ];
    stringFlagsWithPathLiteralConfig = tryReport [
      homelab
      {
        services.k3s.configPath = /etc/k3s/server.yaml;
        services.k3s.extraFlags = "--node-ip=192.168.0.10";
      }
    ];
    # Controls: these must evaluate cleanly.
    harmlessExtraFlags = tryReport [
      homelab
      {
        services.k3s.extraFlags = [
          "--flannel-backend=none"
          "--write-kubeconfig-mode"
          "0600"
          "--node-ip=192.168.0.10"
        ];
      }
    ];
    # The NixOS wiki's style.
    stringExtraFlags = tryReport [
      homelab
      { services.k3s.extraFlags = "--node-ip=192.168.0.10 --cluster-cidr=10.50.0.0/16"; }
    ];
    listWithStoreConfig = tryReport [
      homelab
      {
        services.k3s.configPath = "${builtins.storeDir}/abc-k3s.yaml";
        services.k3s.extraFlags = [ "--node-ip=192.168.0.10" ];
      }
    ];
    configUnderEtc = tryReport [
      homelab
      { services.k3s.configPath = "/etc/k3s/server.yaml"; }
    ];
    # Another drop-in must restart k3s (an /etc change alone restarts nothing).
    otherLocalStoragePath = tryReport [
      homelab
      { services.homelab-bootstrap.k3s.localStoragePath = "/srv/k3s-volumes"; }
    ];
    # A path literal under /etc is copied into the store by nixpkgs' `--config ${configPath}`:
    # k3s reads no drop-in beside the copy, so the flags go on the command line.
    configAsPathLiteral = tryReport [
      homelab
      {
        services.k3s.configPath = /etc/k3s/server.yaml;
        services.k3s.extraFlags = [ "--node-ip=192.168.0.10" ];
      }
    ];
    sopsSSHKeysWithAgeKey = tryReport [
      homelab
      sopsOptions
      { services.homelab-bootstrap.ageKeyFile = "/run/secrets/gitops-age-key"; }
    ];
    kernelWithoutRPFilter = tryReport [
      homelab
      kernelWithoutRPFilter
    ];
    nftables = tryReport [
      homelab
      { networking.nftables.enable = true; }
    ];
    nftablesFlushingRuleset = tryReport [
      homelab
      {
        networking.nftables.enable = true;
        networking.nftables.flushRuleset = true;
      }
    ];
    multiNode = tryReport [
      homelab
      {
        services.homelab-bootstrap.k3s.firewall.multiNode = true;
        networking.nftables.enable = true;
      }
    ];
    apiFromLAN = tryReport [
      homelab
      { services.homelab-bootstrap.k3s.firewall.apiFromLAN = true; }
    ];
    privateRepository = tryReport [
      homelab
      {
        services.homelab-bootstrap.gitops.repoCredentialFile = "/run/secrets/gitops-repo-token";
        services.homelab-bootstrap.settings.gitops.repoUsername = "peterstorm";
      }
    ];
    chartFromNix = tryReport [
      homelab
      { services.homelab-bootstrap.charts.cilium = fakeDrv "cilium-1.18.4.tgz" { }; }
    ];
    k3sManagedElsewhere = tryReport [
      homelab
      {
        services.homelab-bootstrap.k3s.configure = false;
        services.k3s.extraFlags = [ "--flannel-backend=vxlan" ];
      }
    ];
  };
}

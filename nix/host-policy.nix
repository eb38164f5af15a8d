# What the NixOS module decides for the host that matters for security: the ports it opens and
# to whom, and the credentials each unit gets. Plain functions using builtins only, so that CI,
# which has no nixpkgs `lib` and so cannot evaluate the module, evaluates exactly these
# (nix/tests/host-policy-dump.nix, checked by test/unit/nix-contract.test.ts). module.nix wires
# them into networking.firewall and the units; the services.homelab-bootstrap.k3s.openFirewall
# description says who needs each port.
let
  contract = import ./contract.nix;

  optionals = cond: xs: if cond then xs else [ ];
  isIPv6 = cidr: builtins.match ".*:.*" cidr != null;
  # A settings value at a path of attribute names, or null where any part is missing.
  get =
    path: set:
    builtins.foldl' (v: k: if builtins.isAttrs v && v ? ${k} then v.${k} else null) set path;
in
{
  # k3s' default --cluster-cidr.
  defaultPodCIDRs = [ "10.42.0.0/16" ];

  firewall =
    {
      apiFromLAN,
      multiNode,
      podCIDRs,
    }:
    let
      # Served to pods on the host: the API, kubelet, cilium-health, Hubble, node-exporter and
      # the unauthenticated Cilium/Hubble metrics. Never to the LAN.
      podTCPPorts = [
        6443
        10250
        4240
        4244
        9100
        9962
        9963
        9964
        9965
      ];
      ports = sep: builtins.concatStringsSep sep (map toString podTCPPorts);
    in
    {
      inherit podTCPPorts;
      # The Ingress; the API for kubectl from elsewhere or other nodes; what other nodes need.
      lanTCPPorts = [
        80
        443
      ]
      ++ optionals (apiFromLAN || multiNode) [ 6443 ]
      ++ optionals multiNode [
        10250
        4240
      ];
      lanUDPPorts = optionals multiNode [ 8472 ];
      iptablesRules = builtins.concatStringsSep "" (
        map (
          cidr:
          "${if isIPv6 cidr then "ip6tables" else "iptables"} -A nixos-fw -s ${cidr} -p tcp -m multiport --dports ${ports ","} -j nixos-fw-accept\n"
        ) podCIDRs
      );
      nftablesRules = builtins.concatStringsSep "" (
        map (
          cidr: "${if isIPv6 cidr then "ip6" else "ip"} saddr ${cidr} tcp dport { ${ports ", "} } accept\n"
        ) podCIDRs
      );
    };

  # LoadCredential= entries (name:path) of each unit, from the daemon's final settings, so a path
  # set through `settings` and one set through the convenience options cannot disagree. The
  # main unit runs every step, so it gets every credential that is set; the reconcile unit only
  # those of contract.reconcileCredentials (not the age key, not the git credential).
  credentials =
    settings:
    let
      sources = builtins.filter (c: c.path != null) (
        map (c: {
          inherit (c) name;
          path = get c.setting settings;
        }) contract.credentials
      );
      pairs =
        names:
        map (c: "${c.name}:${c.path}") (
          builtins.filter (c: names == null || builtins.elem c.name names) sources
        );
    in
    {
      main = pairs null;
      reconcile = pairs contract.reconcileCredentials;
    };
}

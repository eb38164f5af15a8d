# Evaluates nix/settings-options.nix with the stand-in lib and lists every option it declares
# under services.homelab-bootstrap.settings, plus how `clean` treats a sample value, plus the
# shared names of nix/contract.nix. Read by test/unit/nix-contract.test.ts through
#   nix-instantiate --eval --strict --json nix/tests/settings-dump.nix
let
  lib = import ./lib-stub.nix;
  settings = import ../settings-options.nix {
    inherit lib;
    jsonType = {
      _stubType = "json";
    };
  };

  # "nullOr (listOf (submodule))" -> { name = "listOf"; nullable = true; item = ...; }
  describeType =
    t:
    if t._stubType == "nullOr" then
      describeType t.elem // { nullable = true; }
    else if t._stubType == "listOf" then
      {
        name = "list";
        nullable = false;
        item = describeType t.elem;
      }
    else if t._stubType == "enum" then
      {
        name = "enum";
        nullable = false;
        inherit (t) values;
      }
    else if t._stubType == "intBetween" then
      {
        name = "int";
        nullable = false;
        min = t.lo;
        max = t.hi;
      }
    else if t._stubType == "submodule" then
      {
        name = "object";
        nullable = false;
        inherit (t) freeform;
      }
    else
      {
        name = t._stubType;
        nullable = false;
      };

  # The submodule whose options sit below an option, if any ("*" marks a list item).
  below =
    t:
    if t._stubType == "nullOr" then
      below t.elem
    else if t._stubType == "listOf" then
      (
        let
          inner = below t.elem;
        in
        if inner == null then null else { star = true; inherit (inner) options; }
      )
    else if t._stubType == "submodule" then
      {
        star = false;
        inherit (t) options;
      }
    else
      null;

  walk =
    prefix: options:
    builtins.concatMap (
      name:
      let
        o = options.${name};
        path = prefix ++ [ name ];
        sub = below o.type;
      in
      [
        {
          inherit path;
          type = describeType o.type;
          hasDefault = o ? default;
          default = o.default or null;
          defaultText = o.defaultText.text or null;
          description = o.description or "";
        }
      ]
      ++ (
        if sub == null then
          [ ]
        else
          walk (if sub.star then path ++ [ "*" ] else path) sub.options
      )
    ) (builtins.attrNames options);
in
{
  options = walk [ ] settings.options;
  contract = import ../contract.nix;
  # What the daemon would receive for a settings value as the module system produces it.
  cleaned = settings.clean {
    _module = {
      args = { };
    };
    domain = "example.org";
    kubeconfigFile = "/etc/rancher/k3s/k3s.yaml";
    cloudflare = null;
    cilium = {
      chart = {
        path = "/nix/store/x-cilium.tgz";
      };
      values = {
        hubble.enabled = null;
      };
      waitForReady = null;
      _module = { };
    };
    hosts = [
      {
        name = "sonarr";
        access = "local";
        ip = null;
        service = null;
        ttl = null;
        adopt = null;
      }
    ];
    futureField = {
      keep = null;
    };
  };
}

# Typed `services.homelab-bootstrap.settings` options, built at evaluation time from the
# daemon's own JSON Schema (./settings-schema.json, written by scripts/gen-nix-schema.ts from
# src/settings/schema.ts). Hand-written options would drift from the daemon; these cannot,
# and test/unit/nix-contract.test.ts checks the result against the daemon field by field.
#
# Only `lib.mkOption`, `lib.literalMD` and a few `lib.types` are used, so the contract test
# can evaluate this file with a tiny stand-in lib (nix/tests/lib-stub.nix) where no nixpkgs
# is available.
{ lib, jsonType }:
let
  inherit (builtins)
    attrNames
    concatStringsSep
    elem
    filter
    isAttrs
    isList
    listToAttrs
    map
    removeAttrs
    toJSON
    ;
  inherit (lib) types mkOption;

  schema = builtins.fromJSON (builtins.readFile ./settings-schema.json);

  # How a JSON Schema node maps to an option type. Unions (a chart from a repository or from
  # a path) and open records (Helm values) stay plain JSON: the module system cannot merge
  # "either of two submodules" sensibly, and `validate-config` checks them at build time.
  kindOf =
    s:
    if s ? anyOf || s ? oneOf then
      "json"
    else if s ? enum then
      "enum"
    else if (s.type or null) == "object" then
      (if s ? properties then "object" else "json")
    else if (s.type or null) == "array" then
      "list"
    else if (s.type or null) == "string" then
      "string"
    else if (s.type or null) == "integer" then
      "int"
    else if (s.type or null) == "boolean" then
      "bool"
    else
      "json";

  code = v: "`${toJSON v}`";

  # The constraints the daemon enforces, shown in the option docs (Nix does not re-check
  # them: ECMAScript regexes are not POSIX, and the daemon's message is the better one).
  constraints =
    s:
    filter (x: x != null) [
      (if s ? pattern then "Must match the regular expression ${code s.pattern}." else null)
      (if s ? format then "Format: ${s.format}." else null)
      (if s ? minLength && s.minLength > 0 then "At least ${toString s.minLength} character(s)." else null)
      (if s ? maxLength then "At most ${toString s.maxLength} characters." else null)
      (if s ? minItems && s.minItems > 0 then "At least ${toString s.minItems} item(s)." else null)
      (if s ? anyOf then "One of: ${concatStringsSep "; or " (map shape s.anyOf)}." else null)
    ];

  # A one-line picture of an object branch of a union, for the docs.
  shape =
    s:
    if (s.type or null) == "object" && s ? properties then
      "{ ${concatStringsSep ", " (map (n: if elem n (s.required or [ ]) then n else "${n}?") (attrNames s.properties))} }"
    else
      s.type or "value";

  describe =
    s: extra:
    concatStringsSep "\n\n" (
      filter (x: x != "") ([ (s.description or "") ] ++ constraints s ++ extra)
    );

  typeOf =
    s:
    let
      k = kindOf s;
    in
    if k == "object" then
      types.submodule {
        # Freeform at every level: a newer daemon (an overridden `package`) may accept fields
        # this module does not know yet; `validate-config` still rejects real typos at build time.
        freeformType = jsonType;
        options = optionsOf s;
      }
    else if k == "list" then
      types.listOf (typeOf (s.items or { }))
    else if k == "enum" then
      types.enum s.enum
    else if k == "string" then
      types.str
    else if k == "int" then
      (if s ? minimum && s ? maximum then types.ints.between s.minimum s.maximum else types.int)
    else if k == "bool" then
      types.bool
    else
      jsonType;

  # Required fields without a default must be set (the module system says which one is
  # missing). Everything else defaults to null, which `clean` drops, so the daemon applies
  # its own default: defaults live in one place, the daemon, and are only shown here.
  optionOf =
    required: s:
    if required && !(s ? default) then
      mkOption {
        type = typeOf s;
        description = describe s [ ];
      }
    else
      mkOption {
        type = types.nullOr (typeOf s);
        default = null;
        defaultText =
          if s ? default then
            lib.literalMD "`null`: the daemon's default, ${code s.default}"
          else
            lib.literalMD "`null`: not set";
        description = describe s [ ];
      };

  optionsOf =
    s:
    listToAttrs (
      map (name: {
        inherit name;
        value = optionOf (elem name (s.required or [ ])) s.properties.${name};
      }) (attrNames (s.properties or { }))
    );

  dropNulls = set: removeAttrs set (filter (n: set.${n} == null) (attrNames set));

  # The settings value as the daemon should read it: unset (null) declared options removed,
  # module-system internals removed, freeform additions kept verbatim (a null inside Helm
  # values means "delete this key" to Helm, so only declared options lose their nulls).
  cleanWith =
    s: v:
    let
      k = kindOf s;
    in
    if v == null then
      null
    else if k == "object" && isAttrs v then
      let
        props = s.properties;
        declared = builtins.intersectAttrs props v;
        extra = removeAttrs v (attrNames props ++ [ "_module" ]);
      in
      extra // dropNulls (builtins.mapAttrs (n: x: cleanWith props.${n} x) declared)
    else if k == "list" && isList v then
      map (cleanWith (s.items or { })) v
    else
      v;
in
{
  inherit schema kindOf;
  options = optionsOf schema;
  clean = cleanWith schema;
}

# Just enough of nixpkgs' `lib` to evaluate nix/settings-options.nix where nixpkgs cannot be
# fetched (CI has Debian's nix-bin and no network). Options and types become plain data that
# nix/tests/settings-dump.nix can walk; nothing here merges or checks values.
let
  ty = name: extra: { _stubType = name; } // extra;
in
{
  mkOption = attrs: attrs // { _stubOption = true; };
  literalMD = text: {
    _type = "literalMD";
    inherit text;
  };
  types = {
    str = ty "str" { };
    bool = ty "bool" { };
    int = ty "int" { };
    ints.between = lo: hi: ty "intBetween" { inherit lo hi; };
    enum = values: ty "enum" { inherit values; };
    listOf = elem: ty "listOf" { inherit elem; };
    nullOr = elem: ty "nullOr" { inherit elem; };
    submodule = m: ty "submodule" {
      inherit (m) options;
      freeform = m ? freeformType;
    };
  };
}

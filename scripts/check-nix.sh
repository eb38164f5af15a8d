#!/usr/bin/env bash
# The Nix checks that run without nixpkgs (CI has no network to fetch it):
#  1. every .nix file in the repository parses (`nix-instantiate --parse`);
#  2. nix/settings-schema.json matches the daemon's schema (scripts/gen-nix-schema.ts --check);
#  3. nix/settings-options.nix and nix/contract.nix evaluate (with a stand-in lib) — what the
#     contract test then compares with the daemon — and so do the module's firewall and
#     credential decisions (nix/host-policy.nix, nix/tests/host-policy-dump.nix), which the
#     contract test checks on every run;
#  4. with NIXPKGS_LIB pointing at a nixpkgs `lib` directory, nix/tests/module-eval.nix
#     evaluates the module with the real module system (skipped, and said so, without it).
# Everything that needs nixpkgs itself (building the package, the NixOS evaluation, the VM
# test) is `nix flake check` on a machine with Nix and KVM; see docs/nixos.md. Debian's Nix
# (2.8) also cannot evaluate lib.fileset (the package's `src`; it needs Nix 2.14's
# builtins.readFileType): test/unit/nix-contract.test.ts checks the paths it names instead.
#
# Installs Debian's nix-bin (nix-instantiate) when it is missing.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

if ! command -v nix-instantiate >/dev/null 2>&1; then
  echo "check-nix: nix-instantiate not found; installing Debian's nix-bin" >&2
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "check-nix: need root and apt-get to install nix-bin; install Nix and rerun" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq nix-bin >/dev/null
fi

# Tracked files and new ones not ignored, so a file is checked before its first commit.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.nix' | sort -u)
else
  mapfile -t files < <(find . -name '*.nix' -not -path './node_modules/*' -not -path './.git/*' | sed 's|^\./||' | sort)
fi
[ "${#files[@]}" -gt 0 ] || { echo "check-nix: no .nix files found" >&2; exit 1; }

failed=0
for f in "${files[@]}"; do
  [ -f "$f" ] || continue # deleted in the work tree, still in the index
  if ! out="$(nix-instantiate --parse "$f" 2>&1 >/dev/null)"; then
    echo "check-nix: $f does not parse:" >&2
    echo "$out" >&2
    failed=1
  fi
done
[ "$failed" -eq 0 ] || exit 1
echo "check-nix: ${#files[@]} .nix files parse"

node_cmd=(node)
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 24 ? 0 : 1)' 2>/dev/null; then
  node_cmd=(npx --no-install node) # the repository's Node 24 (devDependency `node`)
fi
"${node_cmd[@]}" scripts/gen-nix-schema.ts --check

nix-instantiate --eval --strict --json nix/tests/settings-dump.nix >/dev/null
nix-instantiate --eval --strict --json nix/tests/host-policy-dump.nix >/dev/null
echo "check-nix: settings options, contract, firewall and credential decisions evaluate"

if [ -n "${NIXPKGS_LIB:-}" ]; then
  [ -f "$NIXPKGS_LIB/default.nix" ] || { echo "check-nix: NIXPKGS_LIB=$NIXPKGS_LIB is not a nixpkgs lib directory" >&2; exit 1; }
  nix-instantiate --eval --strict --json nix/tests/module-eval.nix --arg lib "import $NIXPKGS_LIB" >/dev/null
  echo "check-nix: module evaluates with nixpkgs lib from $NIXPKGS_LIB"
else
  echo "check-nix: NIXPKGS_LIB not set; skipped evaluating the module with the real module system"
fi

# The daemon, built from the repository's package-lock.json with importNpmLock (every
# tarball is a fixed-output fetch pinned by the lock's own integrity hash, so there is no
# npmDepsHash to keep up to date), run by nixpkgs' Node 24, with helm on its PATH.
{
  lib,
  buildNpmPackage,
  importNpmLock,
  makeWrapper,
  nodejs_24,
  kubernetes-helm,
  sops,
  iptables,
}:
let
  packageJSON = lib.importJSON ../package.json;
  lock = lib.importJSON ../package-lock.json;

  # A lock written with npm's `omit-lockfile-registry-resolved` carries no `resolved` URLs,
  # and importNpmLock only fetches entries that have one. The public registry's tarball URL
  # follows from name and version; `integrity` still pins the bytes, so nothing is trusted
  # that the lock did not already pin. Entries that do have a URL are left alone.
  registry = "https://registry.npmjs.org";
  isInstalledPackage = key: lib.hasPrefix "node_modules/" key || lib.hasInfix "/node_modules/" key;
  packageName = key: entry: entry.name or (lib.last (lib.splitString "node_modules/" key));
  tarballURL =
    key: entry:
    let
      name = packageName key entry;
      base = lib.last (lib.splitString "/" name);
    in
    "${registry}/${name}/-/${base}-${entry.version}.tgz";
  needsURL =
    key: entry:
    isInstalledPackage key
    && !(entry ? resolved)
    && entry ? version
    && entry ? integrity
    && !(entry.link or false)
    && !(entry.inBundle or false);
  lockWithURLs = lock // {
    packages = lib.mapAttrs (
      key: entry: if needsURL key entry then entry // { resolved = tarballURL key entry; } else entry
    ) lock.packages;
  };

  # The daemon runs helm only to write releases (it reads them from the cluster) and is tested
  # with Helm 3 and Helm 4 (scripts/test-binaries.sh pins both); nixos-26.05 ships Helm 3.20,
  # nixpkgs-unstable Helm 4. --take-ownership needs 3.17.
  helm =
    lib.throwIfNot (lib.versionAtLeast kubernetes-helm.version "3.17")
      "homelab-bootstrap needs Helm 3.17 or later (it adopts leftover objects with --take-ownership), but this build wraps Helm ${kubernetes-helm.version}; pass a newer one as `kubernetes-helm`."
      kubernetes-helm;
in
buildNpmPackage {
  pname = packageJSON.name;
  inherit (packageJSON) version;

  # Only what the build reads, so editing docs or tests does not rebuild the daemon.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../package.json
      ../package-lock.json
      ../tsconfig.json
      ../scripts/build.ts
      (lib.fileset.maybeMissing ../.npmrc)
      ../src
      ../manifests
    ];
  };

  nodejs = nodejs_24;
  npmDeps = importNpmLock {
    package = packageJSON;
    packageLock = lockWithURLs;
  };
  npmConfigHook = importNpmLock.npmConfigHook;

  # The `node` devDependency downloads a Node binary in a preinstall script, which cannot
  # work in the sandbox and is not wanted: nixpkgs' nodejs_24 runs the daemon. Scripts stay
  # off for every npm call (install, rebuild, pack, prune), which also skips `prepare`.
  npmFlags = [ "--ignore-scripts" ];

  # npm run build = node scripts/build.ts: esbuild bundles src/ into dist/ (the Cloudflare SDK
  # trimmed to the calls the daemon makes; the other dependencies stay in node_modules). esbuild
  # runs from its npm platform package, a static binary, so no install script is needed.
  npmBuildScript = "build";

  nativeBuildInputs = [ makeWrapper ];
  # npmInstallHook wraps bin/homelab-bootstrap around `node dist/cli.js`; these arguments
  # are added to that wrapper. The daemon runs `helm` for the Cilium and Argo CD releases,
  # `check-repo` runs `sops` to prove the tree decrypts, and `doctor` reads kube-proxy's
  # leftover chains with `iptables-save` (suffixed, so a host's own tools still come first).
  makeWrapperArgs = [
    "--prefix"
    "PATH"
    ":"
    (lib.makeBinPath [ helm ])
    "--suffix"
    "PATH"
    ":"
    (lib.makeBinPath [
      sops
      iptables
    ])
    # A small young generation (package.json config.nodeOptions): the daemon's objects live for
    # one run, and V8's default 16 MiB semi-spaces alone add about 20 MiB to the peak RSS of a
    # run that allocates little. NODE_OPTIONS, because the wrapper's own flags come after the
    # script's path; helm and sops ignore it.
    "--set-default"
    "NODE_OPTIONS"
    packageJSON.config.nodeOptions
  ];

  doInstallCheck = true;
  installCheckPhase = ''
    runHook preInstallCheck
    version="$("$out/bin/homelab-bootstrap" --version)"
    if [ "$version" != "${packageJSON.version}" ]; then
      echo "homelab-bootstrap --version printed '$version', expected ${packageJSON.version}" >&2
      exit 1
    fi
    PATH="$out/bin:$PATH" "$out/bin/homelab-bootstrap" validate-config ${../examples/homelab.json}

    # The daemon runs `helm` from its PATH: the wrapper must put it there even when the
    # caller's PATH has none (a systemd unit's). A preloaded script runs helm from inside the
    # wrapped process and exits before the CLI starts.
    probe="$TMPDIR/helm-probe.cjs"
    echo 'process.stdout.write(require("node:child_process").execFileSync("helm", ["version", "--short"], { encoding: "utf8" })); process.exit(0);' > "$probe"
    helmVersion="$(env -i HOME="$TMPDIR" PATH=/var/empty NODE_OPTIONS="--require $probe" "$out/bin/homelab-bootstrap")"
    case "$helmVersion" in
      v3.* | v4.*) echo "wrapper runs helm $helmVersion" ;;
      *)
        echo "the wrapper's helm printed '$helmVersion', expected v3.x or v4.x" >&2
        exit 1
        ;;
    esac
    runHook postInstallCheck
  '';

  passthru = {
    nodejs = nodejs_24;
    inherit helm;
  };

  meta = {
    description = packageJSON.description;
    license = lib.licenses.mit;
    mainProgram = "homelab-bootstrap";
    platforms = lib.platforms.linux;
  };
}

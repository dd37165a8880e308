# A stand-in for the nixpkgs package set, as far as FC's modules and flake use it.
# Packages are directories under `root` (the test fills them with real files: the
# fc binaries it built, shims for setpriv and friends) so unit files that name them
# pass `systemd-analyze verify`. pkgs.formats.toml writes TOML with nixpkgs' own type.
{ lib, root, goVersion ? "1.26.8" }:
let
  system = "x86_64-linux";
  pkg = name: { type = "derivation"; inherit name system; outPath = "${root}/${name}"; };

  # Like nixpkgs' formats.toml: the same value type; inline tables stand in for
  # remarshal's sections (the same TOML document to a decoder).
  tomlType = with lib.types;
    let valueType = oneOf [ bool int float str path (attrsOf valueType) (listOf valueType) ] // { description = "TOML value"; };
    in valueType;
  tomlKey = k: if builtins.match "[A-Za-z0-9_-]+" k != null then k else builtins.toJSON k;
  tomlValue = v:
    if builtins.isAttrs v then "{ " + lib.concatStringsSep ", " (lib.mapAttrsToList (k: x: "${tomlKey k} = ${tomlValue x}") v) + " }"
    else if builtins.isList v then "[ " + lib.concatMapStringsSep ", " tomlValue v + " ]"
    else if builtins.isBool v then lib.boolToString v
    else if builtins.isInt v || builtins.isFloat v then toString v
    else builtins.toJSON (toString v);
  toTOML = attrs: lib.concatStrings (lib.mapAttrsToList (k: v: "${tomlKey k} = ${tomlValue v}\n") attrs);

  # A script package: the test writes `text` to <outPath>/bin/<name> to run it.
  script = name: text: pkg name // { fcStandinScript = { inherit name text; }; };
  go_1_26 = pkg "go" // { version = goVersion; };
in
{
  inherit system lib;
  stdenv.hostPlatform.system = system;
  formats.toml = { }: {
    type = tomlType;
    generate = name: value: builtins.toFile name (toTOML value);
  };
  writeShellScriptBin = script;
  writeShellScript = script;
  coreutils = pkg "coreutils";
  util-linux = pkg "util-linux";
  git = pkg "git";
  openssh = pkg "openssh";
  nix = pkg "nix";
  curl = pkg "curl";
  jq = pkg "jq";
  inherit go_1_26;
  gopls = pkg "gopls";
  postgresql = pkg "postgresql";
  postgresql_15 = pkg "postgresql";
  nixpkgs-fmt = pkg "nixpkgs-fmt";
  nixfmt = pkg "nixfmt";
  # src stays unforced: evaluating it would copy the checkout into the store.
  buildGo126Module = args: pkg args.pname // {
    inherit (args) vendorHash subPackages;
    goVersion = go_1_26.version;
    nativeBuildInputs = map (p: p.name) (args.nativeBuildInputs or [ ]);
  };
  installShellFiles = pkg "installShellFiles";
  mkShell = args: pkg "devshell" // { packages = args.packages or [ ]; };
  runCommand = name: env: text: script name text;
}

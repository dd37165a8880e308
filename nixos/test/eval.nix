# The module evaluation test's harness: FC's flake outputs with nixpkgs' real `lib`,
# the stand-in package set (pkgs.nix) and stand-in NixOS options (options.nix).
#   nix-instantiate --read-write-mode --eval --strict --json nixos/test/eval.nix \
#     --arg lib 'import .../nixpkgs-lib/lib' --argstr root DIR --arg case ./case.nix
# `case` is a module ({ config, ... }: { services.fc-coordinator.enable = true; })
# and `imports` picks the flake's modules ("default", "coordinator", "agent").
# The answer is what the test checks: units, users, the nix.settings trusted users,
# the firewall, nginx, PostgreSQL, admin scripts, failed assertions and warnings.
{ lib, root, case ? { }, imports ? [ "default" ], repo ? ../.., checks ? false, docs ? false, goVersion ? "1.26.8" }:
let
  pkgs = import ./pkgs.nix { inherit lib root goVersion; };
  nixpkgs = {
    inherit lib;
    outPath = "${root}/nixpkgs";
    legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (_: pkgs');
  };
  pkgs' = pkgs // {
    # The VM test: its machines evaluated like this harness's (it cannot run here).
    testers.runNixOSTest = test: pkgs.runCommand "vm-test-${test.name}" { } test.testScript // {
      fcStandinNodes = lib.mapAttrs (_: node: evalConfig [ node ]) test.nodes;
    };
  };
  flake = import (repo + "/flake.nix");
  self = flake.outputs { inherit self nixpkgs; } // { outPath = toString repo; };

  evalConfig = modules: (lib.evalModules {
    modules = [ ./options.nix { _module.args.pkgs = pkgs'; } ] ++ modules;
  }).config;

  summary = config: {
    units = lib.mapAttrs (_: u: {
      inherit (u) description wantedBy wants requires after before path environment serviceConfig unitConfig
        restartIfChanged;
      reloadTriggers = map toString u.reloadTriggers;
    }) config.systemd.services;
    users = config.users.users;
    groups = lib.attrNames config.users.groups;
    trustedUsers = config.nix.settings.trusted-users;
    tcpPorts = config.networking.firewall.allowedTCPPorts;
    tmpfiles = config.systemd.tmpfiles.rules;
    etc = lib.mapAttrs (_: e: toString e.source) (lib.filterAttrs (_: e: e.source != null) config.environment.etc);
    nginx = config.services.nginx;
    postgresql = config.services.postgresql;
    scripts = map (p: p.fcStandinScript) (lib.filter (p: p ? fcStandinScript) config.environment.systemPackages);
    failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
    inherit (config) warnings;
  };
in
if docs then
  # FC's options as the NixOS manual would list them.
  let options = (lib.evalModules { modules = [ ./options.nix { _module.args.pkgs = pkgs'; } self.nixosModules.default ]; }).options;
  in map (o: { inherit (o) name; description = o.description or ""; default = o.default.text or null; example = o ? example; })
    (lib.filter (o: !(lib.hasInfix "._module." o.name) && lib.hasPrefix "services.fc-" o.name)
      (lib.optionAttrSetToDocList options))
else if checks then {
  vm = lib.mapAttrs (_: summary) self.checks.x86_64-linux.vm.fcStandinNodes;
  packages = lib.mapAttrs (_: p: p.name) self.packages.x86_64-linux;
  fcGoVersion = self.packages.x86_64-linux.fc.goVersion;
  fcBuild = { inherit (self.packages.x86_64-linux.fc) subPackages nativeBuildInputs; };
  formatter = self.formatter.x86_64-linux.name;
  devShell = map (p: p.name) self.devShells.x86_64-linux.default.packages;
  modules = lib.attrNames self.nixosModules;
  # Forces the test script (its interpolations) without running it.
  vmScript = self.checks.x86_64-linux.vm.fcStandinScript.text;
}
else
  summary (evalConfig (map (m: self.nixosModules.${m}) imports ++ [ case ]))

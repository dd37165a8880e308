{
  description = "FC: continuous integration for Nix (coordinator + agent fleet)";

  # go.mod's go line is 1.26.8: nixpkgs' go_1_26 must be at least that (nixos-unstable
  # from 2026 on); an older Go refuses the module ("go.mod requires go >= 1.26.8").
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      lib = nixpkgs.lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      version = "0.1.0";
      goVersion = "1.26.8";
      go = pkgs:
        let g = pkgs.go_1_26 or pkgs.go;
        in if lib.versionAtLeast (g.version or "0") goVersion then g
        else throw "FC needs Go >= ${goVersion} (go.mod); this nixpkgs has ${g.version or "none"}: update the nixpkgs input";
    in
    {
      packages = forAllSystems (pkgs:
        let
          buildGoModule = pkgs.buildGo126Module or pkgs.buildGoModule;
        in
        rec {
          fc = builtins.seq (go pkgs) buildGoModule {
            pname = "fc";
            inherit version;
            src = lib.cleanSource self;
            # The hash of `go mod vendor`'s output (nix hash path vendor).
            vendorHash = "sha256-NeLBy3m+gomVF8dbTh0i2f3I/99eUZBRP70nyGnGqEE=";
            subPackages = [ "coordinator/cmd/fc-coordinator" "agent/cmd/fc-agent" "coordinator/cmd/fc" ];
            # fc's shell completions, written by fc itself.
            nativeBuildInputs = [ pkgs.installShellFiles ];
            postInstall = ''
              installShellCompletion --cmd fc \
                --bash <($out/bin/fc completion bash) \
                --zsh <($out/bin/fc completion zsh) \
                --fish <($out/bin/fc completion fish)
            '';
            ldflags = [ "-s" "-w" "-X github.com/fc-ci/fc/protocol.BuildVersion=${version}" ];
            # The tests need a PostgreSQL server and a working Nix; run scripts/test.
            doCheck = false;
            meta = {
              description = "Continuous integration for Nix: coordinator, fc-agent and the fc client";
              mainProgram = "fc-coordinator";
            };
          };
          default = fc;
        });

      # Each module has a key: default and coordinator (or agent) import together.
      nixosModules = {
        coordinator = import ./nixos/coordinator.nix self;
        agent = import ./nixos/agent.nix self;
        default = {
          key = "github.com/fc-ci/fc/nixos/default";
          imports = [ self.nixosModules.coordinator self.nixosModules.agent ];
        };
      };

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [ (go pkgs) pkgs.postgresql_15 pkgs.git pkgs.gopls pkgs.nix ];
        };
      });

      # nixfmt is the RFC 166 style in every nixpkgs new enough for FC's Go.
      formatter = forAllSystems (pkgs: pkgs.nixfmt);

      # A coordinator and an agent build a small jobset; a client substitutes its output
      # from the coordinator's cache. NixOS VM tests need KVM and nixpkgs:
      # nix build .#checks.x86_64-linux.vm. The module evaluation test evaluates its
      # machines with stand-ins (nixos/test), it cannot run it.
      checks = forAllSystems (pkgs: {
        vm = import ./nixos/test/vm.nix { inherit self pkgs; };
      });
    };
}

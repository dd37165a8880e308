{
  description = "FC: continuous integration for Nix (coordinator + agent fleet)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      version = "0.1.0";
    in
    {
      packages = forAllSystems (pkgs:
        let
          # go.mod names Go 1.26.
          buildGoModule = pkgs.buildGo126Module or pkgs.buildGoModule;
        in
        rec {
          fc = buildGoModule {
            pname = "fc";
            inherit version;
            src = nixpkgs.lib.cleanSource self;
            # The hash of `go mod vendor`'s output (nix hash path vendor).
            vendorHash = "sha256-sgr/F2m9gNDcNFT6Iw4dJu2Cl/NGBbIc8mSOBRxDpu4=";
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

      nixosModules = {
        coordinator = import ./nixos/coordinator.nix self;
        agent = import ./nixos/agent.nix self;
        default = { imports = [ self.nixosModules.coordinator self.nixosModules.agent ]; };
      };

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [ (pkgs.go_1_26 or pkgs.go) pkgs.postgresql_15 pkgs.git pkgs.gopls ];
        };
      });
    };
}

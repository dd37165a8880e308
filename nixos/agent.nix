# NixOS module for an FC builder: services.fc-agent.
self:
{ config, lib, pkgs, ... }:
let
  cfg = config.services.fc-agent;
  toml = pkgs.formats.toml { };
  settings = lib.recursiveUpdate
    ({
      agent.state_dir = "/var/lib/fc-agent";
    } // lib.optionalAttrs (cfg.enrollmentTokenFile != null) {
      coordinator.enrollment_token_file = cfg.enrollmentTokenFile;
    })
    cfg.settings;
in
{
  options.services.fc-agent = {
    enable = lib.mkEnableOption "an FC agent (builds and evaluates for an FC coordinator)";
    package = lib.mkOption {
      type = lib.types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.fc;
      description = "Package providing bin/fc-agent.";
    };
    settings = lib.mkOption {
      type = toml.type;
      default = { };
      example = { coordinator.url = "https://ci.example.org"; agent.max_jobs = 8; };
      description = "agent.toml settings; see agent.toml in the FC repository for every key.";
    };
    enrollmentTokenFile = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = ''
        File holding a one-time enrollment token. Not needed once the coordinator has
        pinned the agent's key, or when an admin registered the public key
        (`fc-agent keygen` prints it).
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    systemd.services.fc-agent = {
      description = "FC agent";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" "nix-daemon.service" ];
      path = [ config.nix.package pkgs.git pkgs.openssh ];
      environment.FC_CONFIG_FILE = toml.generate "agent.toml" settings;
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/fc-agent run";
        StateDirectory = "fc-agent";
        StateDirectoryMode = "0700";
        Restart = "always";
        RestartSec = 5;
        # 3: incompatible protocol version, 4: key refused for good. Retrying cannot help.
        RestartPreventExitStatus = "3 4";
        # SIGTERM drains: the agent finishes its running builds before it exits.
        TimeoutStopSec = "6h";
        KillSignal = "SIGTERM";
      };
    };
  };
}

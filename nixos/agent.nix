# NixOS module for an FC builder: services.fc-agent.
# `self` is FC's flake (for the default package); the module has a key, so importing it
# twice (nixosModules.default and nixosModules.agent) declares its options once.
self:
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf types literalExpression;
  cfg = config.services.fc-agent;
  toml = pkgs.formats.toml { };
  s = cfg.settings;
  user = "fc-agent";
  unit = "fc-agent.service";
  stateDir = s.agent.state_dir;
  keyDir = let k = s.agent.key_file or ""; in if k == "" then null else dirOf k;
  dirs = lib.unique ([ stateDir ] ++ lib.optional (keyDir != null) keyDir);
  varLib = d: lib.hasPrefix "/var/lib/" d;
  configFile = toml.generate "agent.toml" s;
  hardening = import ./hardening.nix;
in
{
  key = "github.com/fc-ci/fc/nixos/agent.nix";
  _file = ./agent.nix;

  options.services.fc-agent = {
    enable = mkEnableOption "an FC agent (builds and evaluates for an FC coordinator)";

    package = mkOption {
      type = types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.fc;
      defaultText = literalExpression "fc.packages.\${pkgs.stdenv.hostPlatform.system}.fc";
      description = "Package providing `bin/fc-agent`.";
    };

    settings = mkOption {
      description = ''
        agent.toml, as TOML (see agent.toml in the FC repository for every key). Keys the
        module does not declare pass through as they are; the agent refuses unknown keys
        when it starts (`fc-agent config check`). The file is in the Nix store: put the
        enrollment token in {option}`enrollmentTokenFile`.
      '';
      default = { };
      example = literalExpression ''
        {
          coordinator.url = "https://ci.example.org";
          agent = { max_jobs = 8; features = [ "kvm" "big-parallel" ]; };
        }
      '';
      type = types.submodule {
        freeformType = toml.type;
        options = {
          coordinator.url = mkOption {
            type = types.str;
            default = "";
            example = "https://ci.example.org";
            description = ''
              The coordinator's base URL; the agent dials `<url>/api/v1/agent/connect` (a
              WebSocket). Several coordinators: `coordinator.urls` (a list) instead.
            '';
          };
          agent.state_dir = mkOption {
            type = types.str;
            default = "/var/lib/fc-agent";
            description = "The agent's key and working files; the unit may write only here (and in its cache directory).";
          };
        };
      };
    };

    enrollmentTokenFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/keys/fc-enrollment-token";
      description = ''
        File holding a one-time enrollment token (`fc-coordinator-admin admin
        create-agent-token --name NAME`), readable by root only: the unit gets it as a
        systemd credential. Not needed once the coordinator has pinned the agent's key,
        or when an admin registered the public key (`fc-agent keygen` prints it).
      '';
    };

    drainTimeout = mkOption {
      type = types.str;
      default = "15min";
      example = "6h";
      description = ''
        How long a stop (`systemctl restart fc-agent`, shutdown) lets running builds
        finish (the agent drains on SIGTERM) before systemd kills it; the coordinator
        then gives the steps to another agent after queue_runner.lease_grace. A
        `nixos-rebuild switch` does not restart the agent (restartIfChanged = false):
        a new configuration applies at the next restart or boot.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = lib.hasPrefix "/" stateDir;
        message = "services.fc-agent: settings.agent.state_dir must be an absolute path, not \"${stateDir}\".";
      }
      {
        assertion = (s.coordinator.url != "") != ((s.coordinator.urls or [ ]) != [ ]);
        message = ''
          services.fc-agent: name the coordinator: settings.coordinator.url
          ("https://ci.example.org"), or settings.coordinator.urls for several, not both.
        '';
      }
    ];

    # Its own user: the agent evaluates projects' code and runs git; builds run in the
    # nix-daemon, which must trust it for the options it passes (substituters, keys).
    users.users.${user} = { isSystemUser = true; group = user; home = stateDir; description = "FC agent"; };
    users.groups.${user} = { };
    nix.settings.trusted-users = [ user ];

    # A stable path, so a reload (SIGHUP) reads the new file.
    environment.etc."fc-agent/agent.toml".source = configFile;

    systemd.tmpfiles.rules = map (d: "d ${d} 0700 ${user} ${user} - -") (lib.filter (d: !varLib d) dirs);

    services.fc-agent.settings.coordinator = mkIf (cfg.enrollmentTokenFile != null) {
      enrollment_token_file = "/run/credentials/${unit}/enrollment-token";
    };

    systemd.services.fc-agent = {
      description = "FC agent";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" "nix-daemon.socket" ];
      after = [ "network-online.target" "nix-daemon.socket" ];
      path = [ config.nix.package pkgs.git pkgs.openssh ];
      environment = {
        FC_CONFIG_FILE = "/etc/fc-agent/agent.toml";
        NIX_REMOTE = "daemon";
        # Nix's caches (narinfo lookups, fetched flakes) stay the agent's own.
        XDG_CACHE_HOME = "/var/cache/fc-agent";
      };
      # A switch never waits for running builds (they may take hours); see drainTimeout.
      # A new agent.toml is reloaded instead: SIGHUP applies what can change live
      # (log_level, agent.min_free_disk) and logs what needs a restart.
      restartIfChanged = false;
      reloadTriggers = [ configFile ];
      serviceConfig = hardening // {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${cfg.package}/bin/fc-agent run";
        User = user;
        Group = user;
        WorkingDirectory = stateDir;
        StateDirectory = map (lib.removePrefix "/var/lib/") (lib.filter varLib dirs);
        StateDirectoryMode = "0700";
        CacheDirectory = "fc-agent";
        CacheDirectoryMode = "0700";
        ReadWritePaths = dirs;
        LoadCredential = lib.optional (cfg.enrollmentTokenFile != null) "enrollment-token:${cfg.enrollmentTokenFile}";
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        WatchdogSec = 60;
        Restart = "always";
        RestartSec = 5;
        # 3: incompatible protocol version, 4: key refused for good. Retrying cannot help.
        RestartPreventExitStatus = "3 4";
        KillSignal = "SIGTERM";
        # Ready means connected: a coordinator out of reach fails the start after this
        # (and Restart= tries again) rather than holding whoever waits for it.
        TimeoutStartSec = "2min";
        TimeoutStopSec = cfg.drainTimeout;
      };
    };
  };
}

# NixOS module for the FC coordinator: services.fc-coordinator.
self:
{ config, lib, pkgs, ... }:
let
  cfg = config.services.fc-coordinator;
  toml = pkgs.formats.toml { };
  settings = lib.recursiveUpdate
    ({ state_dir = "/var/lib/fc"; }
      // lib.optionalAttrs cfg.database.createLocally {
        database.url = "postgresql:///fc?host=/run/postgresql";
      })
    cfg.settings;
in
{
  options.services.fc-coordinator = {
    enable = lib.mkEnableOption "the FC coordinator (REST API, dashboard, schedulers, binary cache)";
    package = lib.mkOption {
      type = lib.types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.fc;
      description = "Package providing bin/fc-coordinator.";
    };
    settings = lib.mkOption {
      type = toml.type;
      default = { };
      example = { server = { host = "127.0.0.1"; port = 3000; }; };
      description = "coordinator.toml settings; see coordinator.toml in the FC repository for every key.";
    };
    database.createLocally = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Create a local PostgreSQL database `fc` owned by the `fc` user, reached over its Unix socket.";
    };
    environmentFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      description = "File of FC_* variables for secrets (e.g. FC_DATABASE__URL with a password).";
    };
    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open server.port in the firewall.";
    };
  };

  config = lib.mkIf cfg.enable {
    users.users.fc = { isSystemUser = true; group = "fc"; home = "/var/lib/fc"; };
    users.groups.fc = { };

    services.postgresql = lib.mkIf cfg.database.createLocally {
      enable = true;
      ensureDatabases = [ "fc" ];
      ensureUsers = [{ name = "fc"; ensureDBOwnership = true; }];
    };

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [ (settings.server.port or 3000) ];

    systemd.services.fc-coordinator = {
      description = "FC coordinator";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ] ++ lib.optional cfg.database.createLocally "postgresql.service";
      requires = lib.optional cfg.database.createLocally "postgresql.service";
      environment.FC_CONFIG_FILE = toml.generate "coordinator.toml" settings;
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/fc-coordinator serve";
        User = "fc";
        Group = "fc";
        StateDirectory = "fc";
        Restart = "on-failure";
        EnvironmentFile = lib.mkIf (cfg.environmentFile != null) cfg.environmentFile;
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
      };
    };
  };
}

# NixOS module for the FC coordinator: services.fc-coordinator.
# `self` is FC's flake (for the default package); the module has a key, so importing it
# twice (nixosModules.default and nixosModules.coordinator) declares its options once.
self:
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf types literalExpression;
  cfg = config.services.fc-coordinator;
  toml = pkgs.formats.toml { };
  s = cfg.settings;
  user = "fc";
  unit = "fc-coordinator.service";
  # systemd's credentials: the unit reads its secrets from here, whoever owns the files.
  credential = name: "/run/credentials/${unit}/${name}";
  localAgent = s.local_agent.enabled or false;

  # The directories the coordinator writes, as its settings say (defaults: under
  # state_dir, like the coordinator's own).
  stateDir = s.state_dir;
  orState = v: sub: if v == "" then "${stateDir}/${sub}" else v;
  dirs = lib.unique ([ stateDir (orState (s.cache.dir or "") "cache") (orState (s.logs.log_dir or "") "logs") ]
    ++ lib.optional localAgent (orState (s.local_agent.state_dir or "") "local-agent"));
  # /var/lib/X is a StateDirectory (made by systemd, owned by the user); anything else
  # is made by tmpfiles.
  varLib = d: lib.hasPrefix "/var/lib/" d;
  stateDirectories = map (lib.removePrefix "/var/lib/") (lib.filter varLib dirs);
  otherDirs = lib.filter (d: !varLib d) dirs;

  loopback = h: h == "localhost" || lib.hasPrefix "127." h || h == "::1";
  wildcard = h: h == "" || h == "0.0.0.0" || h == "::";
  upstreamHost = h: if wildcard h then "127.0.0.1" else if lib.hasInfix ":" h then "[${h}]" else h;
  upstream = "http://${upstreamHost s.server.host}:${toString s.server.port}";

  configFile = toml.generate "coordinator.toml" s;
  credentials = lib.optional (cfg.database.urlFile != null) "database-url:${cfg.database.urlFile}"
    ++ lib.optional (cfg.cache.secretKeyFile != null) "cache-key:${cfg.cache.secretKeyFile}"
    ++ lib.mapAttrsToList (name: file: "${name}:${file}") cfg.credentials;

  # fc-coordinator as the service runs it: its configuration, its secrets, its user.
  # Secrets readable only by root are copied for the command into a directory only the
  # service user can read, removed when it ends.
  admin = pkgs.writeShellScriptBin "fc-coordinator-admin" ''
    set -eu
    if [ "$(${pkgs.coreutils}/bin/id -u)" != 0 ]; then
      echo "fc-coordinator-admin: run as root: it runs fc-coordinator as user ${user} with the service's configuration and secrets" >&2
      exit 1
    fi
    secrets=$(${pkgs.coreutils}/bin/mktemp -d)
    trap '${pkgs.coreutils}/bin/rm -rf "$secrets"' EXIT
    ${pkgs.coreutils}/bin/chown ${user}:${user} "$secrets"
    ${lib.optionalString (cfg.database.urlFile != null) ''
      ${pkgs.coreutils}/bin/install -m 0400 -o ${user} -g ${user} ${lib.escapeShellArg cfg.database.urlFile} "$secrets/database-url"
      export FC_DATABASE__URL_FILE="$secrets/database-url"
    ''}
    ${lib.optionalString (cfg.cache.secretKeyFile != null) ''
      ${pkgs.coreutils}/bin/install -m 0400 -o ${user} -g ${user} ${lib.escapeShellArg cfg.cache.secretKeyFile} "$secrets/cache-key"
      export FC_CACHE__SECRET_KEY_FILE="$secrets/cache-key"
    ''}
    export FC_CONFIG_FILE=${configFile}
    cd /
    status=0
    ${pkgs.util-linux}/bin/setpriv --reuid=${user} --regid=${user} --init-groups -- \
      ${cfg.package}/bin/fc-coordinator "$@" || status=$?
    exit "$status"
  '';

  hardening = import ./hardening.nix;

  nginxLocation = extra: {
    proxyPass = upstream;
    proxyWebsockets = true;
    extraConfig = ''
      client_max_body_size ${toString s.server.max_body_size};
      proxy_set_header Host $host;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
    '' + extra;
  };
  # Agent sessions and log streams are long-lived WebSockets that may be quiet for a
  # while; nothing is buffered, so log lines reach viewers as they come.
  longLived = ''
    proxy_read_timeout 1h;
    proxy_send_timeout 1h;
    proxy_buffering off;
    proxy_request_buffering off;
  '';
in
{
  key = "github.com/fc-ci/fc/nixos/coordinator.nix";
  _file = ./coordinator.nix;

  options.services.fc-coordinator = {
    enable = mkEnableOption "the FC coordinator (REST API, dashboard, schedulers, binary cache)";

    package = mkOption {
      type = types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.fc;
      defaultText = literalExpression "fc.packages.\${pkgs.stdenv.hostPlatform.system}.fc";
      description = "Package providing `bin/fc-coordinator`.";
    };

    settings = mkOption {
      description = ''
        coordinator.toml, as TOML (see coordinator.toml in the FC repository for every
        key). Keys the module does not declare pass through as they are; the
        coordinator refuses unknown keys when it starts (`fc-coordinator config check`).
        Secrets do not belong here: the file is in the Nix store. Use
        {option}`database.urlFile`, {option}`cache.secretKeyFile`,
        {option}`environmentFile`, or `*_file` keys naming files outside the store.
      '';
      default = { };
      example = literalExpression ''
        {
          server.public_url = "https://ci.example.org";
          evaluator.max_concurrent_evals = 8;
          cache.upstream_caches = [ "https://cache.nixos.org" ];
        }
      '';
      type = types.submodule {
        freeformType = toml.type;
        options = {
          state_dir = mkOption {
            type = types.str;
            default = "/var/lib/fc";
            description = ''
              The coordinator's files. The unit may write only here and in the cache,
              log and local agent directories the settings name (under state_dir
              unless set).
            '';
          };
          server = mkOption {
            default = { };
            description = "The [server] section.";
            type = types.submodule {
              freeformType = toml.type;
              options = {
                host = mkOption {
                  type = types.str;
                  default = "127.0.0.1";
                  example = "0.0.0.0";
                  description = "Listen address. Behind {option}`services.fc-coordinator.nginx` keep loopback.";
                };
                port = mkOption {
                  type = types.port;
                  default = 3000;
                  description = "Listen port (API, dashboard, binary cache, agent sessions).";
                };
                max_body_size = mkOption {
                  type = types.ints.positive;
                  default = 10485760;
                  description = "Largest request body in bytes; the nginx proxy allows the same.";
                };
                trusted_proxies = mkOption {
                  type = types.listOf types.str;
                  default = if cfg.nginx.enable then [ "127.0.0.1" "::1" ] else [ ];
                  defaultText = literalExpression ''if nginx.enable then [ "127.0.0.1" "::1" ] else [ ]'';
                  description = ''
                    Reverse proxies (addresses, CIDR ranges) whose X-Forwarded-For names
                    the client the rate limit keys on.
                  '';
                };
              };
            };
          };
          database.url = mkOption {
            type = types.str;
            default = if cfg.database.createLocally && cfg.database.urlFile == null then "postgresql:///fc?host=/run/postgresql" else "";
            defaultText = literalExpression ''if database.createLocally && database.urlFile == null then "postgresql:///fc?host=/run/postgresql" else ""'';
            description = ''
              PostgreSQL URL without secrets (it lands in the Nix store); with a password
              use {option}`services.fc-coordinator.database.urlFile`.
            '';
          };
        };
      };
    };

    database = {
      createLocally = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Create a local PostgreSQL database `fc` owned by the `fc` user, reached over its
          Unix socket (peer authentication, no password). Off: name the database with
          {option}`database.urlFile` or `settings.database.url`.
        '';
      };
      urlFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/run/keys/fc-database-url";
        description = ''
          File holding the PostgreSQL URL with its password
          (`postgres://fc:secret@db.example.org/fc`), readable by root only: the unit
          gets it as a systemd credential (`database.url_file`), never through the store.
        '';
      };
    };

    cache.secretKeyFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/keys/fc-cache-key.sec";
      description = ''
        The binary cache's signing key (`nix-store --generate-binary-cache-key` output),
        readable by root only, passed as a systemd credential. Null: the coordinator
        generates one in state_dir on first start.
      '';
    };

    credentials = mkOption {
      type = types.attrsOf types.path;
      default = { };
      example = literalExpression ''
        {
          smtp-password = "/run/keys/fc-smtp-password";
        }
      '';
      description = ''
        More secret files the unit gets as systemd credentials (`LoadCredential=NAME:FILE`,
        read by systemd as root), for settings that name a file: the coordinator reads
        `/run/credentials/fc-coordinator.service/NAME`, e.g.
        `settings.notifications.password_file`, or a declared API key's `key_file` or
        user's `password_file`.
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/keys/fc-coordinator.env";
      description = "File of `FC_<SECTION>__<KEY>=value` lines (systemd EnvironmentFile), for other secrets.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open `settings.server.port` in the firewall. Only with a listen address others
        can reach (not loopback); behind nginx open the proxy's ports instead.
      '';
    };

    nginx = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Put nginx in front of the coordinator: a virtual host proxying to the listen
          address, with WebSocket upgrades (agent sessions, live logs), the coordinator's
          body size limit and forwarded headers; the coordinator trusts the proxy's
          X-Forwarded-For for rate limiting. TLS and ACME are set on
          `services.nginx.virtualHosts.<virtualHost>` as for any nginx host.
        '';
      };
      virtualHost = mkOption {
        type = types.str;
        default = "fc";
        example = "ci.example.org";
        description = "Name of the nginx virtual host (its server_name).";
      };
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.database.createLocally || cfg.database.urlFile != null || s.database.url != "";
        message = ''
          services.fc-coordinator: database.createLocally = false needs the database named:
          set services.fc-coordinator.database.urlFile (a URL with its password) or
          settings.database.url. Without one the coordinator would start a private
          PostgreSQL in state_dir, whose server binaries are not on the unit's PATH.
        '';
      }
      {
        assertion = cfg.database.urlFile == null || (!cfg.database.createLocally && s.database.url == "");
        message = ''
          services.fc-coordinator: database.urlFile names the database, so set
          database.createLocally = false and leave settings.database.url unset.
        '';
      }
      {
        assertion = !(cfg.credentials ? database-url || cfg.credentials ? cache-key);
        message = "services.fc-coordinator.credentials: database-url and cache-key are database.urlFile's and cache.secretKeyFile's; name the file there.";
      }
      {
        assertion = !cfg.openFirewall || !loopback s.server.host;
        message = ''
          services.fc-coordinator: openFirewall opens port ${toString s.server.port}, but
          settings.server.host = "${s.server.host}" listens on loopback only: set
          settings.server.host = "0.0.0.0" (or "::"), or proxy with nginx.enable and open
          the proxy's ports.
        '';
      }
    ];

    users.users.${user} = { isSystemUser = true; group = user; home = stateDir; description = "FC coordinator"; };
    users.groups.${user} = { };

    services.postgresql = mkIf cfg.database.createLocally {
      enable = true;
      ensureDatabases = [ "fc" ];
      ensureUsers = [{ name = user; ensureDBOwnership = true; }];
    };

    # The local agent builds through the nix-daemon as the coordinator's user.
    nix.settings.trusted-users = mkIf localAgent [ user ];

    networking.firewall.allowedTCPPorts = mkIf cfg.openFirewall [ s.server.port ];

    environment.systemPackages = [ admin ];

    systemd.tmpfiles.rules = map (d: "d ${d} 0700 ${user} ${user} - -") otherDirs;

    services.nginx = mkIf cfg.nginx.enable {
      enable = true;
      virtualHosts.${cfg.nginx.virtualHost}.locations = {
        "/" = nginxLocation "";
        "/api/v1/agent/connect" = nginxLocation longLived;
        "~ ^/api/v1/builds/[0-9]+/log/stream$" = nginxLocation longLived;
      };
    };

    systemd.services.fc-coordinator = {
      description = "FC coordinator";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ] ++ lib.optional localAgent "nix-daemon.socket";
      after = [ "network-online.target" ] ++ lib.optional cfg.database.createLocally "postgresql.service"
        ++ lib.optional localAgent "nix-daemon.socket";
      requires = lib.optional cfg.database.createLocally "postgresql.service";
      # git resolves and fetches inputs; the local agent runs nix too.
      path = [ pkgs.git pkgs.openssh ] ++ lib.optional localAgent config.nix.package;
      environment = {
        FC_CONFIG_FILE = "${configFile}";
        XDG_CACHE_HOME = "/var/cache/fc-coordinator";
      } // lib.optionalAttrs localAgent { NIX_REMOTE = "daemon"; };
      # A restart is quick: agents reconnect and keep their leases for
      # queue_runner.lease_grace; the local agent hands running work back.
      serviceConfig = hardening // {
        Type = "notify";
        NotifyAccess = "main";
        # The daemon pings at half of it, from start-up (migrations) through draining.
        WatchdogSec = 60;
        ExecStart = "${cfg.package}/bin/fc-coordinator serve";
        User = user;
        Group = user;
        WorkingDirectory = stateDir;
        StateDirectory = stateDirectories;
        StateDirectoryMode = "0700";
        CacheDirectory = "fc-coordinator";
        CacheDirectoryMode = "0700";
        ReadWritePaths = dirs;
        LoadCredential = credentials;
        EnvironmentFile = lib.optional (cfg.environmentFile != null) cfg.environmentFile;
        Restart = "on-failure";
        RestartSec = 5;
        # Ready after migrations, which a large database may take a while over.
        TimeoutStartSec = "5min";
        TimeoutStopSec = 30 + (s.local_agent.drain_timeout or 10);
      } // lib.optionalAttrs (s.server.port < 1024) {
        # The one privilege a low port needs.
        AmbientCapabilities = "CAP_NET_BIND_SERVICE";
        CapabilityBoundingSet = "CAP_NET_BIND_SERVICE";
      };
    };

    services.fc-coordinator.settings = lib.mkMerge [
      (mkIf (cfg.database.urlFile != null) { database.url_file = credential "database-url"; })
      (mkIf (cfg.cache.secretKeyFile != null) { cache.secret_key_file = credential "cache-key"; })
    ];
  };
}

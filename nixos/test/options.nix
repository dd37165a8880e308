# Stand-ins for the NixOS options FC's modules (and the flake's VM test nodes) set,
# typed like NixOS's own, so a misspelt or unknown option is an evaluation error just
# as on a real system. Only the module evaluation test uses this file.
{ lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  opt = type: default: mkOption { inherit type default; };
  strs = opt (types.listOf types.str) [ ];
  # NixOS's unitOption: a value or a list of values, one directive each.
  unitValue = types.oneOf [ types.bool types.int types.str types.path ];
  unitOption = types.either unitValue (types.listOf unitValue);
  service = types.submodule {
    options = {
      enable = opt types.bool true;
      description = opt types.str "";
      wantedBy = strs;
      requiredBy = strs;
      wants = strs;
      requires = strs;
      after = strs;
      before = strs;
      bindsTo = strs;
      partOf = strs;
      conflicts = strs;
      path = opt (types.listOf (types.either types.package types.str)) [ ];
      environment = opt (types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ]))) { };
      serviceConfig = opt (types.attrsOf unitOption) { };
      unitConfig = opt (types.attrsOf unitOption) { };
      restartIfChanged = opt types.bool true;
      reloadIfChanged = opt types.bool false;
      stopIfChanged = opt types.bool true;
      restartTriggers = opt (types.listOf types.unspecified) [ ];
      reloadTriggers = opt (types.listOf types.unspecified) [ ];
      script = opt types.lines "";
      preStart = opt types.lines "";
    };
  };
  location = types.submodule {
    options = {
      proxyPass = opt (types.nullOr types.str) null;
      proxyWebsockets = opt types.bool false;
      recommendedProxySettings = opt types.bool false;
      root = opt (types.nullOr types.path) null;
      return = opt (types.nullOr (types.oneOf [ types.str types.int ])) null;
      extraConfig = opt types.lines "";
    };
  };
  virtualHost = types.submodule {
    options = {
      serverName = opt (types.nullOr types.str) null;
      forceSSL = opt types.bool false;
      enableACME = opt types.bool false;
      locations = opt (types.attrsOf location) { };
      extraConfig = opt types.lines "";
    };
  };
in
{
  options = {
    assertions = opt (types.listOf (types.submodule {
      options = { assertion = mkOption { type = types.bool; }; message = mkOption { type = types.str; }; };
    })) [ ];
    warnings = strs;

    systemd.services = opt (types.attrsOf service) { };
    systemd.tmpfiles.rules = strs;

    users.users = opt (types.attrsOf (types.submodule {
      options = {
        isSystemUser = opt types.bool false;
        isNormalUser = opt types.bool false;
        group = opt types.str "";
        extraGroups = strs;
        home = opt types.path "/var/empty";
        createHome = opt types.bool false;
        description = opt types.str "";
        password = opt (types.nullOr types.str) null;
      };
    })) { };
    users.groups = opt (types.attrsOf (types.submodule { options.members = strs; })) { };

    networking.hostName = opt types.str "nixos";
    networking.firewall.enable = opt types.bool true;
    networking.firewall.allowedTCPPorts = opt (types.listOf types.port) [ ];

    nix.package = opt types.package pkgs.nix;
    nix.settings = opt (types.submodule {
      freeformType = types.attrsOf types.anything;
      options = {
        trusted-users = strs;
        substituters = strs;
        trusted-public-keys = strs;
        experimental-features = strs;
      };
    }) { };

    environment.systemPackages = opt (types.listOf types.package) [ ];
    environment.etc = opt (types.attrsOf (types.submodule {
      options = { text = opt (types.nullOr types.lines) null; source = opt (types.nullOr types.path) null; mode = opt types.str "symlink"; };
    })) { };

    services.postgresql = {
      enable = opt types.bool false;
      ensureDatabases = strs;
      ensureUsers = opt (types.listOf (types.submodule {
        options = { name = mkOption { type = types.str; }; ensureDBOwnership = opt types.bool false; };
      })) [ ];
    };

    services.nginx = {
      enable = opt types.bool false;
      recommendedProxySettings = opt types.bool false;
      virtualHosts = opt (types.attrsOf virtualHost) { };
    };

    security.acme.acceptTerms = opt types.bool false;
    security.acme.defaults.email = opt (types.nullOr types.str) null;

    # The VM test's machines.
    virtualisation.memorySize = opt types.ints.positive 1024;
    virtualisation.diskSize = opt types.ints.positive 1024;
    virtualisation.cores = opt types.ints.positive 1;
    system.stateVersion = opt types.str "26.05";
  };
  # As NixOS does: root is a definition, so modules add users rather than replace it.
  config.nix.settings.trusted-users = [ "root" ];
}

# systemd sandboxing both FC units share. The daemons need the network, their own
# directories (ReadWritePaths, set by each module from its settings), Unix sockets
# (PostgreSQL, the nix-daemon) and child processes (git, ssh, nix); nothing else.
{
  NoNewPrivileges = true;
  ProtectSystem = "strict";
  ProtectHome = true;
  PrivateTmp = true;
  ProtectKernelTunables = true;
  ProtectKernelModules = true;
  ProtectKernelLogs = true;
  ProtectControlGroups = true;
  ProtectClock = true;
  ProtectHostname = true;
  RestrictNamespaces = true;
  RestrictRealtime = true;
  RestrictSUIDSGID = true;
  LockPersonality = true;
  RemoveIPC = true;
  CapabilityBoundingSet = "";
  RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
  SystemCallArchitectures = "native";
  SystemCallFilter = [ "@system-service" ];
  SystemCallErrorNumber = "EPERM";
  UMask = "0077";
}

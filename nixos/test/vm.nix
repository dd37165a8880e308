# NixOS VM test: a coordinator (with PostgreSQL, behind nginx), an agent on another
# machine building examples/release.nix, and a client substituting a job's output
# from the coordinator's cache. Run with nixpkgs and KVM:
#   nix build .#checks.x86_64-linux.vm
# The module evaluation test (nixos/module_test.go) evaluates these machines with
# stand-ins for NixOS's options; it cannot run the VMs.
{ self, pkgs }:
let
  # examples/ as a git repository the coordinator serves with git daemon.
  exampleRepo = "/srv/git/examples";
in
pkgs.testers.runNixOSTest {
  name = "fc";
  nodes = {
    coordinator = { ... }: {
      imports = [ self.nixosModules.default self.nixosModules.coordinator ];
      virtualisation.memorySize = 2048;
      services.fc-coordinator = {
        enable = true;
        nginx.enable = true;
        nginx.virtualHost = "coordinator";
        settings.server.public_url = "http://coordinator";
      };
      networking.firewall.allowedTCPPorts = [ 80 9418 ];
      environment.systemPackages = [ pkgs.git pkgs.curl pkgs.jq ];
      systemd.services.example-git = {
        description = "git daemon serving the example jobset";
        wantedBy = [ "multi-user.target" ];
        serviceConfig.ExecStart = "${pkgs.git}/bin/git daemon --export-all --base-path=/srv/git --reuseaddr";
      };
    };
    builder = { ... }: {
      imports = [ self.nixosModules.agent ];
      virtualisation.memorySize = 2048;
      services.fc-agent = {
        enable = true;
        settings.coordinator.url = "http://coordinator";
        settings.agent.name = "builder";
        enrollmentTokenFile = "/run/keys/fc-enrollment-token";
      };
    };
    client = { ... }: {
      nix.settings.experimental-features = [ "nix-command" ];
    };
  };

  testScript = ''
    import json

    start_all()
    coordinator.wait_for_unit("fc-coordinator.service")
    coordinator.wait_for_unit("nginx.service")
    coordinator.succeed(
        "mkdir -p ${exampleRepo} && cp -r ${self}/examples/. ${exampleRepo}/ && cd ${exampleRepo}"
        " && git init -q -b main && git add -A"
        " && git -c user.name=t -c user.email=t@t commit -qm examples"
    )
    key = coordinator.succeed("fc-coordinator-admin admin create-key --name vm --role admin").strip()
    token = coordinator.succeed("fc-coordinator-admin admin create-agent-token --name builder").strip()

    builder.succeed(f"install -D -m 0400 /dev/null /run/keys/fc-enrollment-token && echo {token} > /run/keys/fc-enrollment-token")
    builder.systemctl("restart fc-agent.service")
    builder.wait_for_unit("fc-agent.service")

    def api(method, path, body=None):
        data = "" if body is None else f"-d '{json.dumps(body)}' -H 'Content-Type: application/json'"
        out = coordinator.succeed(
            f"curl -sf -X {method} -H 'Authorization: Bearer {key}' {data} http://coordinator{path}"
        )
        return json.loads(out) if out.strip().startswith(("{", "[")) else out.strip()

    coordinator.wait_until_succeeds(
        f"curl -sf -H 'Authorization: Bearer {key}' http://coordinator/api/v1/agents | grep -q builder"
    )
    project = api("POST", "/api/v1/projects", {"name": "examples", "repository_url": "git://coordinator/examples"})
    jobset = api("POST", f"/api/v1/projects/{project['id']}/jobsets", {
        "name": "main", "branch": "main", "flake_mode": False,
        "nix_expression": "release.nix", "check_interval": 0, "inputs": [],
    })
    api("POST", "/api/v1/evaluations/trigger", {"jobset_id": jobset["id"]})

    def hello_output(_):
        evals = api("GET", f"/api/v1/evaluations?jobset_id={jobset['id']}&limit=1")["items"]
        if not evals:
            return None
        builds = api("GET", f"/api/v1/builds?evaluation_id={evals[0]['id']}&limit=500")
        done = [b for b in builds["items"] if b["job"] == "hello" and b["status"] == "succeeded"]
        return api("GET", f"/api/v1/builds/{done[0]['id']}")["outputs"]["out"] if done else None

    out = None
    with coordinator.nested("waiting for the hello job"):
        retry(lambda last: hello_output(last) is not None)
        out = hello_output(True)
    public_key = api("GET", "/api/v1/cache/public-key")

    client.succeed(
        f"nix-store -r {out} --option substituters http://coordinator/nix-cache"
        f" --option trusted-public-keys '{public_key}'"
    )
    client.succeed(f"grep -q hello {out}")
  '';
}

# A small legacy jobset of /bin/sh derivations (no nixpkgs needed), the sample project
# of scripts/quickstart. Every job builds in well under a second except `slow-log`,
# which prints a line every 0.2 s for about 10 s: open its build page while it runs
# to watch the live log.
#
# `salt` (a jobset input of type string, empty by default) goes into every name, so a
# different salt builds everything afresh instead of finding the outputs in the store.
{ salt ? "" }:
let
  suffix = if salt == "" then "" else "-${salt}";
  # job name attrs: a derivation whose builder is /bin/sh. Builders start with an
  # empty PATH, hence the export.
  job = name: script: attrs: derivation ({
    name = "${name}${suffix}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ("export PATH=/bin:/usr/bin; " + script) ];
  } // attrs);

  hello = job "hello" ''
    echo "Hello from FC"
    echo hello > $out
  '' { };

  # A dependency chain: chain-3 needs chain-2, which needs chain-1.
  chain-1 = job "chain-1" ''
    echo "first link"
    echo 1 > $out
  '' { };
  chain-2 = job "chain-2" ''
    echo "second link, after $(cat ${chain-1})"
    echo "$(cat ${chain-1}) 2" > $out
  '' { };
  chain-3 = job "chain-3" ''
    echo "third link, after $(cat ${chain-2})"
    echo "$(cat ${chain-2}) 3" > $out
  '' { };

  # A failure, and a job that depends on it (it ends dependency_failed, unbuilt).
  broken = job "broken" ''
    echo "this job fails on purpose"
    exit 1
  '' { };
  needs-broken = job "needs-broken" ''
    echo "never runs: ${broken}"
    touch $out
  '' { };

  # A slow live log: 50 lines, one every 0.2 s.
  slow-log = job "slow-log" ''
    i=0
    while [ $i -lt 50 ]; do
      i=$((i + 1))
      echo "slow-log: line $i of 50"
      sleep 0.2
    done
    echo done > $out
  '' { };
in
{
  inherit hello chain-1 chain-2 chain-3 broken needs-broken slow-log;
}

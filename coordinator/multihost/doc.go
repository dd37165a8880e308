// Package multihost holds the multi-host fault tests: one PostgreSQL, three real
// fc-coordinator processes gossiping as a cluster, four real fc-agent processes with
// their own Nix stores and a SeaweedFS S3 server, each in its own network namespace,
// joined by veth pairs on a bridge (addresses the test chooses; no host networking).
// The faults: a coordinator SIGKILLed under a running build, an agent cut off within
// and beyond its lease, PostgreSQL restarted, the S3 server restarted during an
// upload. The tests run as root (ip netns, unshare); there is no code here.
package multihost

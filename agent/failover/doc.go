// Package failover holds the end-to-end tests of agent failover: a real fc-agent
// given several coordinators (coordinator.urls) that share one PostgreSQL moves to
// the next when the one it is on dies, and its running step finishes once, with its
// log whole. The mechanism is agent/daemon (rotation) and agent/work (log offsets,
// upload and report retries across sessions); there is no code here.
package failover

// Package protocol is the wire protocol between fc-coordinator and fc-agent: message
// types, framing, stream kinds and the protocol version. It depends on neither side.
package protocol

// BuildVersion is the release of the FC programs, set at link time by scripts/build
// (-ldflags "-X github.com/fc-ci/fc/protocol.BuildVersion=...").
var BuildVersion = "dev"

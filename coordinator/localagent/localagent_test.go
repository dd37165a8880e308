package localagent

import (
	"log/slog"
	"net"
	"slices"
	"testing"

	"github.com/fc-ci/fc/coordinator/config"
)

func TestURLFor_LoopbackForEveryAddressElseTheListenersOwn(t *testing.T) {
	cases := []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 3000}, "http://127.0.0.1:3000"},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 3001}, "http://127.0.0.1:3001"},
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 3002}, "http://127.0.0.1:3002"},
		{&net.TCPAddr{Port: 3003}, "http://127.0.0.1:3003"},
		{&net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 80}, "http://10.1.2.3:80"},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 3004}, "http://[::1]:3004"},
	}
	for _, c := range cases {
		if got := URLFor(c.addr); got != c.want {
			t.Errorf("URLFor(%v) = %q, want %q", c.addr, got, c.want)
		}
	}
}

// The local agent takes the coordinator's list of path-input directories as its own,
// and keeps path inputs away from the coordinator's files on the same machine.
func TestFromConfig_PathInputsFollowTheCoordinatorAndSpareItsFiles(t *testing.T) {
	cfg := config.Defaults()
	cfg.StateDir = "/var/lib/fc"
	cfg.Eval.AllowedInputPaths = []string{"/srv/inputs"}
	cfg.Cache.SecretKeyFile = "/etc/fc/cache-key.sec"
	cfg.Cache.Dir = "/data/cache"
	lc := FromConfig(cfg, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 3000}, slog.New(slog.DiscardHandler))
	if !slices.Equal(lc.AllowedInputPaths, []string{"/srv/inputs"}) {
		t.Errorf("allowed input paths %v", lc.AllowedInputPaths)
	}
	for _, p := range []string{"/var/lib/fc", "/etc/fc/cache-key.sec", "/data/cache"} {
		if !slices.Contains(lc.Protected, p) {
			t.Errorf("%s is not protected from path inputs: %v", p, lc.Protected)
		}
	}
}

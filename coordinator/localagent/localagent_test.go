package localagent

import (
	"net"
	"testing"
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

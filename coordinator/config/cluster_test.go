package config

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCluster_OffNeedsNothing(t *testing.T) {
	if err := Defaults().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestCluster_ErrorsNameTheKey(t *testing.T) {
	for key, edit := range map[string]func(*Cluster){
		"cluster.bind":              func(c *Cluster) { c.Bind = "nohost" },
		"cluster.advertise":         func(c *Cluster) { c.Advertise = "1.2.3.4:x" },
		"cluster.join":              func(c *Cluster) { c.Join = []string{"a:1", "b"} },
		"cluster.key_file":          func(c *Cluster) { c.KeyFile = "" },
		"cluster.api_address":       func(c *Cluster) { c.APIAddress = "10.0.0.1:3000" },
		"cluster.probe_interval_ms": func(c *Cluster) { c.ProbeIntervalMS = 1 },
	} {
		cfg := Defaults()
		cfg.Cluster.Enabled, cfg.Cluster.KeyFile = true, "/k"
		edit(&cfg.Cluster)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s: error %v does not name it", key, err)
		}
	}
}

func TestCluster_KeyBase64OrRaw(t *testing.T) {
	dir := t.TempDir()
	raw := []byte("0123456789abcdef0123456789abcdef")
	for name, content := range map[string][]byte{
		"b64": []byte(base64.StdEncoding.EncodeToString(raw[:24]) + "\n"),
		"raw": raw[:16],
		"bad": []byte("short\n"),
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, content, 0o600); err != nil {
			t.Fatal(err)
		}
		k, err := Cluster{KeyFile: p}.ClusterKey()
		switch name {
		case "b64":
			if err != nil || string(k) != string(raw[:24]) {
				t.Errorf("base64 key: %q, %v", k, err)
			}
		case "raw":
			if err != nil || string(k) != string(raw[:16]) {
				t.Errorf("raw key: %q, %v", k, err)
			}
		default:
			if err == nil || !strings.Contains(err.Error(), "cluster.key_file") {
				t.Errorf("bad key: %v", err)
			}
		}
	}
}

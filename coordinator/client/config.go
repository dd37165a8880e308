package client

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/BurntSushi/toml"
)

// Config is what fc login stores: where the coordinator is and the API key.
type Config struct {
	URL    string `toml:"url"`
	APIKey string `toml:"api_key"`
}

// configPath is $XDG_CONFIG_HOME/fc/config.toml, or ~/.config/fc/config.toml.
func configPath(getenv func(string) string) (string, error) {
	if dir := getenv("XDG_CONFIG_HOME"); dir != "" {
		return filepath.Join(dir, "fc", "config.toml"), nil
	}
	home := getenv("HOME")
	if home == "" {
		return "", errors.New("neither XDG_CONFIG_HOME nor HOME is set: nowhere to keep the configuration")
	}
	return filepath.Join(home, ".config", "fc", "config.toml"), nil
}

// loadConfig reads the stored configuration (none yet is an empty one), then lets
// FC_URL and FC_API_KEY override it.
func loadConfig(getenv func(string) string) (Config, error) {
	var c Config
	path, err := configPath(getenv)
	if err == nil {
		b, rerr := os.ReadFile(path)
		switch {
		case errors.Is(rerr, fs.ErrNotExist):
		case rerr != nil:
			return c, fmt.Errorf("read %s: %w", path, rerr)
		default:
			if _, err := toml.Decode(string(b), &c); err != nil {
				return c, fmt.Errorf("%s: %w", path, err)
			}
		}
	}
	if v := getenv("FC_URL"); v != "" {
		c.URL = v
	}
	if v := getenv("FC_API_KEY"); v != "" {
		c.APIKey = v
	}
	return c, nil
}

// saveConfig writes c readable by its owner alone: the file holds an API key. It
// is written beside and renamed, so a reader never sees half of it.
func saveConfig(getenv func(string) string, c Config) (string, error) {
	path, err := configPath(getenv)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	var buf bytes.Buffer
	buf.WriteString("# written by fc login; holds an API key\n")
	if err := toml.NewEncoder(&buf).Encode(c); err != nil {
		return "", fmt.Errorf("encode configuration: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".config.toml-*")
	if err != nil {
		return "", fmt.Errorf("write configuration: %w", err)
	}
	defer os.Remove(f.Name()) // after a successful rename there is nothing to remove
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return "", fmt.Errorf("write configuration: %w", err)
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		return "", fmt.Errorf("write configuration: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("write configuration: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return "", fmt.Errorf("write configuration: %w", err)
	}
	return path, nil
}

// removeConfig deletes the stored configuration; none is not an error.
func removeConfig(getenv func(string) string) (string, bool, error) {
	path, err := configPath(getenv)
	if err != nil {
		return "", false, err
	}
	err = os.Remove(path)
	if errors.Is(err, fs.ErrNotExist) {
		return path, false, nil
	}
	if err != nil {
		return path, false, fmt.Errorf("remove %s: %w", path, err)
	}
	return path, true, nil
}

// Object storage: the [s3] section, and the store keys of [cache] and [logs] that use it.

package config

import (
	"fmt"
	"strings"
)

// Where the cache's NARs and finished build logs are kept ([cache] store, [logs] store).
const (
	StoreDir = "dir" // a local directory (cache.dir, logs.log_dir)
	StoreS3  = "s3"  // the bucket of the [s3] section
)

// S3 is the [s3] section: the S3-compatible object store (AWS S3, SeaweedFS, MinIO,
// ...) that [cache] store = "s3" and [logs] store = "s3" share. NARs are kept under
// <prefix>nar/, uploads in progress under <prefix>tmp/, finished logs under
// <prefix>logs/.
type S3 struct {
	// Endpoint is host[:port] of the S3 API, without a scheme.
	Endpoint string `toml:"endpoint"`
	// Bucket must exist; the coordinator does not create it.
	Bucket string `toml:"bucket"`
	// Region is the bucket's region (what request signatures name).
	Region string `toml:"region"`
	// Prefix begins every key, e.g. "fc/"; empty: keys at the bucket's root.
	Prefix string `toml:"prefix"`
	// AccessKeyFile and SecretKeyFile hold the credentials (the file's content, trimmed).
	AccessKeyFile string `toml:"access_key_file"`
	SecretKeyFile string `toml:"secret_key_file"`
	// TLS speaks HTTPS to the endpoint; InsecureSkipVerify accepts any certificate.
	TLS                bool `toml:"tls"`
	InsecureSkipVerify bool `toml:"insecure_skip_verify"`
	// PublicEndpoint is host[:port] that Nix clients reach the store at, for presigned
	// URLs when it differs from Endpoint; empty: Endpoint.
	PublicEndpoint string `toml:"public_endpoint"`
}

func s3Defaults() S3 { return S3{Region: "us-east-1", TLS: true} }

// validateStores checks the store keys, and the [s3] section when a store uses it.
func (c Config) validateStores() error {
	usesS3 := false
	for key, v := range map[string]string{"cache.store": c.Cache.Store, "logs.store": c.Logs.Store} {
		switch v {
		case StoreDir:
		case StoreS3:
			usesS3 = true
		default:
			return fmt.Errorf("%s %q: use %q or %q", key, v, StoreDir, StoreS3)
		}
	}
	if c.Cache.PresignExpiry < 1 || c.Cache.PresignExpiry > 7*24*3600 {
		return fmt.Errorf("cache.presign_expiry must be from 1 second to 7 days (604800)")
	}
	if c.Cache.Redirect && c.Cache.Store != StoreS3 {
		return fmt.Errorf("cache.redirect needs cache.store = %q (a local directory has no URLs to redirect to)", StoreS3)
	}
	if !usesS3 {
		return nil
	}
	switch {
	case c.S3.Endpoint == "" || strings.Contains(c.S3.Endpoint, "://"):
		return fmt.Errorf("s3.endpoint must be host[:port], without a scheme (got %q)", c.S3.Endpoint)
	case strings.Contains(c.S3.PublicEndpoint, "://"):
		return fmt.Errorf("s3.public_endpoint must be host[:port], without a scheme (got %q)", c.S3.PublicEndpoint)
	case c.S3.Bucket == "":
		return fmt.Errorf("s3.bucket must be set when cache.store or logs.store is %q", StoreS3)
	case c.S3.AccessKeyFile == "" || c.S3.SecretKeyFile == "":
		return fmt.Errorf("s3.access_key_file and s3.secret_key_file must be set when cache.store or logs.store is %q", StoreS3)
	case c.S3.Prefix != "" && (strings.HasPrefix(c.S3.Prefix, "/") || !strings.HasSuffix(c.S3.Prefix, "/")):
		return fmt.Errorf("s3.prefix %q must end with / and not begin with one", c.S3.Prefix)
	}
	return nil
}

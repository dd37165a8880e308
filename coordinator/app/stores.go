// Where the cache's NARs and the build logs are kept: local directories, or the [s3]
// bucket (cache.store, logs.store).

package app

import (
	"context"
	"time"

	"github.com/fc-ci/fc/coordinator/cache"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/logs"
	"github.com/fc-ci/fc/coordinator/objstore"
)

// openObjectStore connects to the [s3] bucket when a store uses it; nil otherwise.
func openObjectStore(s config.Config) (*objstore.Store, error) {
	if s.Cache.Store != config.StoreS3 && s.Logs.Store != config.StoreS3 {
		return nil, nil
	}
	cfg, err := objstore.FromConfig(s.S3)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return objstore.Open(ctx, cfg)
}

func newLogStore(s config.Config, obj *objstore.Store) (logs.Store, error) {
	if s.Logs.Store == config.StoreS3 {
		return logs.NewS3(s.LogDir(), obj, s.Logs.Compress, s.Logs.MaxLogSize)
	}
	return logs.NewDir(s.LogDir(), s.Logs.Compress)
}

func newBlobStore(s config.Config, obj *objstore.Store) (cache.BlobStore, error) {
	if s.Cache.Store == config.StoreS3 {
		return cache.NewS3(obj), nil
	}
	return cache.NewDir(s.CacheDir())
}

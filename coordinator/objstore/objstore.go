// Package objstore is the coordinator's S3-compatible object store ([s3]): a bucket
// and key prefix over minio-go, whose errors name the bucket and key, and a missing
// object is fs.ErrNotExist. The cache keeps NARs in it and the logs store finished
// build logs.
package objstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/fc-ci/fc/coordinator/config"
)

// Config is what reaching the bucket takes.
type Config struct {
	Endpoint, PublicEndpoint string // host[:port]
	Bucket, Region, Prefix   string
	AccessKey, SecretKey     string
	TLS, InsecureSkipVerify  bool
	// MaxRetries is how often minio-go retries a request (0: its default, 10).
	MaxRetries int
}

// FromConfig reads the [s3] section and its key files.
func FromConfig(s config.S3) (Config, error) {
	read := func(key, file string) (string, error) {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("s3.%s: %w", key, err)
		}
		v := strings.TrimSpace(string(b))
		if v == "" {
			return "", fmt.Errorf("s3.%s: %s is empty", key, file)
		}
		return v, nil
	}
	ak, err := read("access_key_file", s.AccessKeyFile)
	if err != nil {
		return Config{}, err
	}
	sk, err := read("secret_key_file", s.SecretKeyFile)
	if err != nil {
		return Config{}, err
	}
	return Config{Endpoint: s.Endpoint, PublicEndpoint: s.PublicEndpoint, Bucket: s.Bucket, Region: s.Region,
		Prefix: s.Prefix, AccessKey: ak, SecretKey: sk, TLS: s.TLS, InsecureSkipVerify: s.InsecureSkipVerify}, nil
}

// Store is a bucket and a key prefix.
type Store struct {
	c      *minio.Client
	pub    *minio.Client // presigns URLs for clients (Config.PublicEndpoint)
	bucket string
	prefix string
}

// Info describes one object; Key is without the store's prefix.
type Info struct {
	Key      string
	Size     int64
	Modified time.Time
	Meta     map[string]string // user metadata, keys lower case
}

// Open connects to the bucket and checks that it exists.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	mk := func(endpoint string) (*minio.Client, error) {
		opts := &minio.Options{Creds: credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""), Secure: cfg.TLS,
			Region: cfg.Region, MaxRetries: cfg.MaxRetries}
		if cfg.InsecureSkipVerify {
			t := http.DefaultTransport.(*http.Transport).Clone()
			t.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the operator asked for it
			opts.Transport = t
		}
		c, err := minio.New(endpoint, opts)
		if err != nil {
			return nil, fmt.Errorf("s3 endpoint %s: %w", endpoint, err)
		}
		return c, nil
	}
	c, err := mk(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	pub := c
	if cfg.PublicEndpoint != "" && cfg.PublicEndpoint != cfg.Endpoint {
		if pub, err = mk(cfg.PublicEndpoint); err != nil {
			return nil, err
		}
	}
	ok, err := c.BucketExists(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("s3 bucket %s at %s: %w", cfg.Bucket, cfg.Endpoint, err)
	}
	if !ok {
		return nil, fmt.Errorf("s3 bucket %s at %s does not exist (create it first)", cfg.Bucket, cfg.Endpoint)
	}
	return &Store{c: c, pub: pub, bucket: cfg.Bucket, prefix: cfg.Prefix}, nil
}

// Bucket is the bucket's name.
func (s *Store) Bucket() string { return s.bucket }

// Name is how errors and logs name key: s3://bucket/prefix+key.
func (s *Store) Name(key string) string { return "s3://" + s.bucket + "/" + s.prefix + key }

// wrap names key in err, and makes a missing object fs.ErrNotExist.
func (s *Store) wrap(op, key string, err error) error {
	if err == nil {
		return nil
	}
	if r := minio.ToErrorResponse(err); r.Code == minio.NoSuchKey || r.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%s %s: %w", op, s.Name(key), fs.ErrNotExist)
	}
	return fmt.Errorf("%s %s: %w", op, s.Name(key), err)
}

// partSize bounds what one streamed upload buffers (minio-go sizes parts for 5 TiB
// objects otherwise, half a gigabyte each).
const partSize = 16 << 20

// Put stores r (size bytes, or -1 when unknown) at key, with user metadata meta.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64, meta map[string]string) error {
	_, err := s.c.PutObject(ctx, s.bucket, s.prefix+key, r, size,
		minio.PutObjectOptions{PartSize: partSize, UserMetadata: meta, ContentType: "application/octet-stream"})
	return s.wrap("put", key, err)
}

// Stat describes the object at key.
func (s *Store) Stat(ctx context.Context, key string) (Info, error) {
	oi, err := s.c.StatObject(ctx, s.bucket, s.prefix+key, minio.StatObjectOptions{})
	if err != nil {
		return Info{}, s.wrap("stat", key, err)
	}
	return s.info(oi), nil
}

func (s *Store) info(oi minio.ObjectInfo) Info {
	meta := map[string]string{}
	for k, v := range oi.UserMetadata {
		meta[strings.ToLower(k)] = v
	}
	return Info{Key: strings.TrimPrefix(oi.Key, s.prefix), Size: oi.Size, Modified: oi.LastModified, Meta: meta}
}

// Object is an object open for reading: it seeks (each seek a ranged request).
type Object struct {
	*minio.Object
	size int64
}

// Size is the object's length.
func (o *Object) Size() int64 { return o.size }

// Get opens the object at key; a missing one is fs.ErrNotExist at once.
func (s *Store) Get(ctx context.Context, key string) (*Object, error) {
	o, err := s.c.GetObject(ctx, s.bucket, s.prefix+key, minio.GetObjectOptions{})
	if err != nil {
		return nil, s.wrap("get", key, err)
	}
	st, err := o.Stat()
	if err != nil {
		o.Close()
		return nil, s.wrap("get", key, err)
	}
	return &Object{Object: o, size: st.Size}, nil
}

// ReadAll reads the object at key, refusing one over limit bytes.
func (s *Store) ReadAll(ctx context.Context, key string, limit int64) ([]byte, error) {
	o, err := s.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer o.Close()
	if o.Size() > limit {
		return nil, fmt.Errorf("get %s: %d bytes, more than %d", s.Name(key), o.Size(), limit)
	}
	b, err := io.ReadAll(o)
	return b, s.wrap("get", key, err)
}

// maxCopy is the largest object a single S3 copy request may copy.
const maxCopy = 5 << 30

// Copy copies the object at src (size bytes) to dst, within the bucket, on the server.
func (s *Store) Copy(ctx context.Context, src, dst string, size int64) error {
	d := minio.CopyDestOptions{Bucket: s.bucket, Object: s.prefix + dst}
	from := minio.CopySrcOptions{Bucket: s.bucket, Object: s.prefix + src}
	var err error
	if size > maxCopy {
		_, err = s.c.ComposeObject(ctx, d, from)
	} else {
		_, err = s.c.CopyObject(ctx, d, from)
	}
	if err != nil {
		return fmt.Errorf("copy %s to %s: %w", s.Name(src), s.Name(dst), err)
	}
	return nil
}

// Delete removes the object at key; a missing one is no error.
func (s *Store) Delete(ctx context.Context, key string) error {
	err := s.c.RemoveObject(ctx, s.bucket, s.prefix+key, minio.RemoveObjectOptions{})
	if err = s.wrap("delete", key, err); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// List calls fn for every object whose key begins with under.
func (s *Store) List(ctx context.Context, under string, fn func(Info) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the listing when fn fails
	for oi := range s.c.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix + under, Recursive: true}) {
		if oi.Err != nil {
			return fmt.Errorf("list %s: %w", s.Name(under), oi.Err)
		}
		if err := fn(s.info(oi)); err != nil {
			return err
		}
	}
	return nil
}

// Presign is a URL that reads the object at key without credentials until expiry.
func (s *Store) Presign(ctx context.Context, key string, expiry time.Duration) (*url.URL, error) {
	u, err := s.pub.PresignedGetObject(ctx, s.bucket, s.prefix+key, expiry, nil)
	if err != nil {
		return nil, fmt.Errorf("presign %s: %w", s.Name(key), err)
	}
	return u, nil
}

package config

import (
	"strings"
	"testing"
)

func TestLoad_S3StoresNeedTheS3Section(t *testing.T) {
	chdir(t, t.TempDir())
	base := []string{"FC_STATE_DIR=/srv/fc"}
	for _, tc := range []struct {
		env  []string
		want string // in the error; "" loads
	}{
		{nil, ""},
		{[]string{"FC_CACHE__STORE=tape"}, `cache.store "tape"`},
		{[]string{"FC_LOGS__STORE=s3"}, "s3.endpoint"},
		{[]string{"FC_CACHE__STORE=s3", "FC_S3__ENDPOINT=https://s3.example.org"}, "without a scheme"},
		{[]string{"FC_CACHE__STORE=s3", "FC_S3__ENDPOINT=s3.example.org"}, "s3.bucket"},
		{[]string{"FC_CACHE__STORE=s3", "FC_S3__ENDPOINT=s3.example.org", "FC_S3__BUCKET=fc"}, "s3.access_key_file"},
		{[]string{"FC_CACHE__REDIRECT=true"}, "cache.redirect needs"},
		{[]string{"FC_CACHE__PRESIGN_EXPIRY=0"}, "presign_expiry"},
		{[]string{"FC_CACHE__STORE=s3", "FC_CACHE__REDIRECT=true", "FC_S3__ENDPOINT=s3.example.org:9000", "FC_S3__BUCKET=fc",
			"FC_S3__ACCESS_KEY_FILE=/k", "FC_S3__SECRET_KEY_FILE=/s", "FC_S3__PREFIX=fc"}, "s3.prefix"},
		{[]string{"FC_CACHE__STORE=s3", "FC_LOGS__STORE=s3", "FC_CACHE__REDIRECT=true", "FC_S3__ENDPOINT=s3.example.org:9000",
			"FC_S3__BUCKET=fc", "FC_S3__ACCESS_KEY_FILE=/k", "FC_S3__SECRET_KEY_FILE=/s", "FC_S3__PREFIX=fc/"}, ""},
	} {
		cfg, err := Load("", append(base, tc.env...))
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v", tc.env, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: %v, want an error saying %q", tc.env, err, tc.want)
		case tc.want == "" && len(tc.env) > 0 && (cfg.Cache.Store != StoreS3 || cfg.S3.Bucket != "fc" || !cfg.S3.TLS):
			t.Errorf("%v: loaded %+v %+v", tc.env, cfg.Cache, cfg.S3)
		}
	}
}

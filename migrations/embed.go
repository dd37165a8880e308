// Package migrations holds FC's numbered SQL schema migrations, embedded into the
// coordinator and applied with goose (see storage.Migrate).
package migrations

import "embed"

// FS holds the migration files, NNNNN_name.sql, in goose's SQL format.
//
//go:embed *.sql
var FS embed.FS

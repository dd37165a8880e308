package cli

import (
	"fmt"

	"github.com/fc-ci/fc/coordinator/config"
)

// configCmd is `fc-coordinator config check`: load the configuration as serve would
// (files, FC_ variables, validation) and say what it means, touching nothing else,
// so an operator or a NixOS module test can vet a file before a restart.
func configCmd(load func() (config.Config, error), args []string, env Env) error {
	if len(args) != 1 || args[0] != "check" {
		return usageError{"config needs a command: check"}
	}
	cfg, err := load()
	if err != nil {
		return fmt.Errorf("configuration refused: %w", err)
	}
	db := "database.url"
	switch {
	case cfg.Database.URLFile != "":
		db = "the URL in " + cfg.Database.URLFile
	case cfg.Database.URL == "":
		db = "a private PostgreSQL in " + cfg.EmbeddedDatabaseDir()
	}
	fmt.Fprintf(env.Stdout, "configuration OK: listening on %s, state in %s, cache in %s, logs in %s, database: %s\n",
		cfg.Server.Addr(), cfg.StateDir, cfg.CacheDir(), cfg.LogDir(), db)
	if d := cfg.Declarations; !d.Empty() {
		jobsets := 0
		for _, p := range d.Projects {
			jobsets += len(p.Jobsets)
		}
		// Their secret files are read when they are applied, not here.
		fmt.Fprintf(env.Stdout, "declares %d projects (%d jobsets), %d API keys, %d agents, %d users (in %s)\n",
			len(d.Projects), jobsets, len(d.APIKeys), len(d.Agents), len(d.Users), d.File)
	}
	for _, n := range cfg.LocalStoresNotes() {
		fmt.Fprintf(env.Stdout, "note: %s\n", n)
	}
	return nil
}

package storage_test

import (
	"context"
	"errors"
	"testing"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

const declSource = "/etc/fc/coordinator.toml"

func counts(t *testing.T, rep storage.DeclarationReport, kind string) storage.DeclarationCounts {
	t.Helper()
	if c := rep.Counts[kind]; c != nil {
		return *c
	}
	return storage.DeclarationCounts{}
}

// TestApplyDeclarations_AgentKeys: a re-keyed declared agent has its old key revoked
// and the new one pinned; a removed one is revoked; declaring a revoked key again
// brings it back; an agent name another agent holds is a conflict that changes
// nothing.
func TestApplyDeclarations_AgentKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	apply := func(agents ...storage.DeclaredAgent) (storage.DeclarationReport, error) {
		return db.ApplyDeclarations(ctx, storage.Declarations{Source: declSource, Agents: agents})
	}
	key1 := storage.DeclaredAgent{Name: "b1", PublicKey: "ssh-ed25519 AAAA1", Fingerprint: "SHA256:one"}
	key2 := storage.DeclaredAgent{Name: "b1", PublicKey: "ssh-ed25519 AAAA2", Fingerprint: "SHA256:two", Push: true}

	rep, err := apply(key1)
	if err != nil || counts(t, rep, "agents") != (storage.DeclarationCounts{Created: 1}) {
		t.Fatalf("declare: %v %+v", err, counts(t, rep, "agents"))
	}
	if rep, err = apply(key1); err != nil || rep.Changed() {
		t.Fatalf("declare again: %v, changed %v", err, rep.Changed())
	}
	rep, err = apply(key2)
	if err != nil || counts(t, rep, "agents") != (storage.DeclarationCounts{Created: 1, Removed: 1}) || len(rep.RevokedAgents) != 1 {
		t.Fatalf("re-key: %v %+v %v", err, counts(t, rep, "agents"), rep.RevokedAgents)
	}
	old, err := db.AgentByFingerprint(ctx, "SHA256:one")
	if err != nil || old.RevokedAt == nil || old.Declared != "" {
		t.Errorf("the old key = %+v %v, want revoked and no longer declared", old, err)
	}
	cur, err := db.AgentByFingerprint(ctx, "SHA256:two")
	if err != nil || cur.RevokedAt != nil || !cur.Push || cur.Declared != declSource {
		t.Errorf("the new key = %+v %v", cur, err)
	}

	if rep, err = apply(); err != nil || counts(t, rep, "agents").Removed != 1 {
		t.Fatalf("remove: %v %+v", err, counts(t, rep, "agents"))
	}
	if rep, err = apply(key2); err != nil || counts(t, rep, "agents").Updated != 1 {
		t.Fatalf("declare the revoked key again: %v %+v", err, counts(t, rep, "agents"))
	}
	if cur, _ = db.AgentByFingerprint(ctx, "SHA256:two"); cur.RevokedAt != nil || !cur.Enabled {
		t.Errorf("a revoked key declared again = %+v, want active", cur)
	}

	if _, err := db.RegisterAgent(ctx, "b2", "ssh-ed25519 AAAA3", "SHA256:three"); err != nil {
		t.Fatal(err)
	}
	_, err = apply(key2, storage.DeclaredAgent{Name: "b2", PublicKey: "ssh-ed25519 AAAA4", Fingerprint: "SHA256:four"})
	if !errors.Is(err, storage.ErrConflict) {
		t.Errorf("a taken name: %v, want a conflict", err)
	}
	if _, err := db.AgentByFingerprint(ctx, "SHA256:four"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a failed apply pinned a key: %v", err)
	}
}

// TestApplyRepositoryJobsets_LeavesTheConfigsJobsets: a repository's file does not
// take over a jobset the config declares, and takes over one the API made.
func TestApplyRepositoryJobsets_LeavesTheConfigsJobsets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	js := func(name, branch string) storage.JobsetFields {
		return storage.JobsetFields{Name: name, Branch: branch, FlakeMode: true, NixExpression: "hydraJobs",
			CheckInterval: 60, SchedulingShares: 100, State: storage.JobsetEnabled, KeepNr: 3}
	}
	_, err := db.ApplyDeclarations(ctx, storage.Declarations{Source: declSource, Projects: []storage.DeclaredProject{{
		Fields:  storage.ProjectFields{Name: "p", RepositoryURL: "/srv/p", Enabled: true},
		Jobsets: []storage.JobsetFields{js("cfg", "main")},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	p, err := db.GetProjectByName(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.CreateJobset(ctx, p.ID, js("api", "main")); err != nil {
		t.Fatal(err)
	}
	src := "repository:p/.fc.toml"
	c, err := db.ApplyRepositoryJobsets(ctx, p.ID, src, []storage.JobsetFields{js("cfg", "other"), js("api", "other")})
	if err != nil || c != (storage.DeclarationCounts{Updated: 1}) {
		t.Fatalf("apply: %+v %v, want only the API's jobset taken over", c, err)
	}
	cfg, _ := db.GetJobsetByName(ctx, p.ID, "cfg")
	api, _ := db.GetJobsetByName(ctx, p.ID, "api")
	if cfg.Branch != "main" || cfg.Declared != declSource || api.Branch != "other" || api.Declared != src {
		t.Errorf("cfg = %s %s, api = %s %s", cfg.Branch, cfg.Declared, api.Branch, api.Declared)
	}
}

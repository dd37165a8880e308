package storage

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Narinfo is one store path in the binary cache. Its blob (the NAR, zstd-compressed
// or, for data that does not compress, plain) is in the blob store under URL; the row
// is inserted only once the blob is durable.
type Narinfo struct {
	HashPart    string // the 32-character nixbase32 part of the store path
	StorePath   string
	URL         string // nar/<filehash>.nar.zst, or nar/<narhash>.nar uncompressed
	Compression string
	FileHash    string // sha256:<nixbase32> of the blob (the NAR hash when plain)
	FileSize    int64
	NarHash     string // sha256:<nixbase32> of the NAR
	NarSize     int64
	References  []string // basenames
	Deriver     string   // basename, or ""
	Sigs        []string
	CA          string
	CreatedAt   time.Time
	// PendingStep, when not 0, is the step whose builder uploaded this path as one of
	// its outputs: the row carries no signature and is neither served nor counted as
	// present until that step's success is recorded (FinishStep signs it then).
	PendingStep int64
}

const narinfoColumns = `hash_part, store_path, url, compression, file_hash, file_size, nar_hash, nar_size,
	refs, deriver, sigs, ca, created_at`

func scanNarinfo(row scanner) (Narinfo, error) {
	var n Narinfo
	err := row.Scan(&n.HashPart, &n.StorePath, &n.URL, &n.Compression, &n.FileHash, &n.FileSize, &n.NarHash,
		&n.NarSize, &n.References, &n.Deriver, &n.Sigs, &n.CA, &n.CreatedAt)
	return n, err
}

// GetNarinfo finds a path the cache serves by its hash part (a pending output is not
// served: ErrNotFound).
func (db *DB) GetNarinfo(ctx context.Context, hashPart string) (Narinfo, error) {
	n, err := scanNarinfo(db.pool.QueryRow(ctx, `SELECT `+narinfoColumns+` FROM narinfos
		WHERE hash_part = $1 AND pending_step IS NULL`, hashPart))
	if err != nil {
		return Narinfo{}, fmt.Errorf("narinfo %s: %w", hashPart, mapErr(err))
	}
	return n, nil
}

// PresentHashParts returns the subset of hashParts the cache holds and serves, in one
// query (pending outputs do not count).
func (db *DB) PresentHashParts(ctx context.Context, hashParts []string) (map[string]bool, error) {
	rows, err := db.pool.Query(ctx, `SELECT hash_part FROM narinfos WHERE hash_part = ANY($1) AND pending_step IS NULL`, hashParts)
	if err != nil {
		return nil, fmt.Errorf("look up narinfos: %w", err)
	}
	defer rows.Close()
	present := make(map[string]bool, len(hashParts))
	for rows.Next() {
		var h string
		if err := rows.Scan(&h); err != nil {
			return nil, fmt.Errorf("look up narinfos: %w", err)
		}
		present[h] = true
	}
	return present, rows.Err()
}

// SmallBlob is a blob kept in PostgreSQL (see CommitNarinfos), by name.
func (db *DB) SmallBlob(ctx context.Context, name string) ([]byte, error) {
	var data []byte
	if err := db.pool.QueryRow(ctx, `SELECT data FROM small_blobs WHERE name = $1`, name).Scan(&data); err != nil {
		return nil, fmt.Errorf("blob %s: %w", name, mapErr(err))
	}
	return data, nil
}

// SmallBlobInfo names a blob kept in PostgreSQL and gives its size.
type SmallBlobInfo struct {
	Name string
	Size int64
}

// UnusedSmallBlobs lists blobs in PostgreSQL that no narinfo points at, older than
// olderThan (what an interrupted retention run can leave). Delete them with
// DeleteBlobIfUnused, which checks again under the blob's lock.
func (db *DB) UnusedSmallBlobs(ctx context.Context, olderThan time.Duration) ([]SmallBlobInfo, error) {
	rows, err := db.pool.Query(ctx, `SELECT b.name, length(b.data) FROM small_blobs b
		WHERE b.created_at < now() - make_interval(secs => $1)
		AND NOT EXISTS (SELECT 1 FROM narinfos n WHERE n.url = 'nar/' || b.name)`, olderThan.Seconds())
	if err != nil {
		return nil, fmt.Errorf("list unused small blobs: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (SmallBlobInfo, error) {
		var b SmallBlobInfo
		err := r.Scan(&b.Name, &b.Size)
		return b, err
	})
	if err != nil {
		return nil, fmt.Errorf("list unused small blobs: %w", err)
	}
	return out, nil
}

// NarinfoCount is the number of paths and their compressed bytes.
func (db *DB) NarinfoCount(ctx context.Context) (paths int64, bytes int64, err error) {
	err = db.pool.QueryRow(ctx, `SELECT count(*), coalesce(sum(file_size), 0) FROM narinfos WHERE pending_step IS NULL`).Scan(&paths, &bytes)
	if err != nil {
		return 0, 0, fmt.Errorf("count narinfos: %w", err)
	}
	return paths, bytes, nil
}

// UploadScope is what an agent may put into the cache at this moment: the outputs of
// the steps leased to it, the content-addressed paths of an evaluation leased to it,
// or anything with the push permission. The cache asks before it accepts an upload;
// CommitNarinfos checks the grant again inside the commit.
type UploadScope struct {
	Revoked bool
	Push    bool
	// Evaluating: the agent holds the lease of a running evaluation, so it may upload
	// content-addressed paths (its .drv closure), whose content the cache verifies.
	Evaluating bool
	// Outputs are the declared outputs of the running steps leased to the agent, by
	// store path.
	Outputs map[string]ScopedOutput
}

// ScopedOutput is a declared output of a leased step.
type ScopedOutput struct {
	StepID int64
	// CA is the content address a fixed-output derivation declares for it ("" for an
	// input-addressed output).
	CA string
}

// UploadScope reads an agent's upload scope in one query.
func (db *DB) UploadScope(ctx context.Context, agentID int64) (UploadScope, error) {
	rows, err := db.pool.Query(ctx, `SELECT a.revoked_at IS NOT NULL, a.push,
			EXISTS (SELECT 1 FROM evaluations e WHERE e.agent_id = a.id AND e.status = 'running'),
			o.step_id, o.path, o.ca
		FROM agents a
		LEFT JOIN steps s ON s.agent_id = a.id AND s.status = 'running'
		LEFT JOIN step_outputs o ON o.step_id = s.id
		WHERE a.id = $1`, agentID)
	if err != nil {
		return UploadScope{}, fmt.Errorf("upload scope of agent %d: %w", agentID, err)
	}
	defer rows.Close()
	sc := UploadScope{Outputs: map[string]ScopedOutput{}}
	found := false
	for rows.Next() {
		var step *int64
		var path, ca *string
		if err := rows.Scan(&sc.Revoked, &sc.Push, &sc.Evaluating, &step, &path, &ca); err != nil {
			return UploadScope{}, fmt.Errorf("upload scope of agent %d: %w", agentID, err)
		}
		found = true
		if step != nil && path != nil {
			sc.Outputs[*path] = ScopedOutput{StepID: *step, CA: deref(ca)}
		}
	}
	if err := rows.Err(); err != nil {
		return UploadScope{}, fmt.Errorf("upload scope of agent %d: %w", agentID, err)
	}
	if !found {
		return UploadScope{}, fmt.Errorf("upload scope of agent %d: %w", agentID, ErrNotFound)
	}
	return sc, nil
}

// UploadGrant is why an agent may commit a group of uploaded paths; CommitNarinfos
// checks it again inside the commit's transaction, so a revocation, a withdrawn push
// permission or a lost lease that happened during a long upload still refuses it.
type UploadGrant struct {
	AgentID int64 // 0: not an agent's upload (nothing to check)
	// Push: some path of the group is accepted only because of the push permission.
	Push bool
	// Steps whose outputs the group holds: each must still be leased to AgentID and
	// running.
	Steps []int64
}

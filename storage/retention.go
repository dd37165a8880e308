package storage

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// keepSQL is the retention rule as one query: the hash parts of every path the cache
// must keep. Roots are the outputs of the newest keep_nr evaluations of each jobset,
// of builds marked keep and of channel members; the .drv of every queued or running
// step and the outputs of its input steps. Everything those reference, transitively,
// is kept too.
const keepSQL = `
WITH RECURSIVE
newest AS (
	SELECT e.id FROM (
		SELECT e.id, e.jobset_id, row_number() OVER (PARTITION BY e.jobset_id ORDER BY e.id DESC) AS rn
		FROM evaluations e) e
	JOIN jobsets j ON j.id = e.jobset_id
	WHERE e.rn <= j.keep_nr
),
roots(path) AS (
	SELECT bo.path FROM build_outputs bo JOIN builds b ON b.id = bo.build_id
	WHERE b.keep OR b.id IN (SELECT eb.build_id FROM evaluation_builds eb WHERE eb.evaluation_id IN (SELECT id FROM newest)
	   OR eb.evaluation_id IN (SELECT current_evaluation_id FROM channels WHERE current_evaluation_id IS NOT NULL))
	UNION
	SELECT s.drv_path FROM steps s WHERE s.status IN ('queued', 'running')
	UNION
	SELECT o.path FROM steps s JOIN step_edges e ON e.step_id = s.id JOIN step_outputs o ON o.step_id = e.depends_on
	WHERE s.status IN ('queued', 'running')
),
keep(hash_part) AS (
	SELECT substr(path, 12, 32) FROM roots
	UNION
	SELECT left(r, 32) FROM keep k JOIN narinfos n ON n.hash_part = k.hash_part, unnest(n.refs) AS r
)
SELECT hash_part FROM keep`

// removableSQL says which narinfo rows n retention removes ($1: the maximum age in
// seconds): served paths outside the keep set once old enough, and pending outputs
// of steps no longer running (their build failed, or its lease was lost: a retry
// uploads them again), whatever their age.
const removableSQL = `(
	(n.pending_step IS NULL AND n.created_at < now() - make_interval(secs => $1)
	 AND n.hash_part NOT IN (SELECT hash_part FROM keep))
	OR (n.pending_step IS NOT NULL
	 AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.id = n.pending_step AND s.status = 'running')))`

// GCCandidate is a cached path retention would delete.
type GCCandidate struct {
	HashPart  string
	StorePath string
	URL       string
	FileSize  int64
}

// GCCandidates lists the paths outside the keep set that are older than maxAge.
func (db *DB) GCCandidates(ctx context.Context, maxAge time.Duration) ([]GCCandidate, error) {
	rows, err := db.pool.Query(ctx, `WITH keep AS (`+keepSQL+`)
		SELECT n.hash_part, n.store_path, n.url, n.file_size FROM narinfos n
		WHERE `+removableSQL+`
		ORDER BY n.store_path`, maxAge.Seconds())
	if err != nil {
		return nil, fmt.Errorf("compute retention: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (GCCandidate, error) {
		var c GCCandidate
		err := r.Scan(&c.HashPart, &c.StorePath, &c.URL, &c.FileSize)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("compute retention: %w", err)
	}
	return out, nil
}

// DeleteNarinfos removes narinfo rows, unless the keep set gained them meanwhile
// (re-checked in the same statement), and returns the hash parts deleted.
func (db *DB) DeleteNarinfos(ctx context.Context, hashParts []string, maxAge time.Duration) ([]string, error) {
	rows, err := db.pool.Query(ctx, `WITH keep AS (`+keepSQL+`)
		DELETE FROM narinfos n WHERE n.hash_part = ANY($2) AND `+removableSQL+`
		RETURNING n.hash_part`, maxAge.Seconds(), hashParts)
	if err != nil {
		return nil, fmt.Errorf("delete narinfos: %w", err)
	}
	deleted, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("delete narinfos: %w", err)
	}
	// Tell every coordinator (they cache narinfo answers) which paths are gone. A
	// notification's payload is limited to 8000 bytes: 200 hash parts at a time.
	for start := 0; start < len(deleted); start += 200 {
		part := strings.Join(deleted[start:min(start+200, len(deleted))], ",")
		if _, err := db.pool.Exec(ctx, `SELECT pg_notify($1, $2)`, string(NarinfoDeletedChannel), part); err != nil {
			return deleted, fmt.Errorf("announce deleted narinfos: %w", err)
		}
	}
	return deleted, nil
}

// blobLock serialises work on one blob name between uploads (which point a narinfo at
// it) and retention (which deletes it once nothing does).
func blobLock(ctx context.Context, tx pgx.Tx, url string) error {
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('fc-blob:' || $1, 0))`, url)
	return err
}

// CommitNarinfos makes a group of blobs visible (commit) and records their narinfos
// in one transaction, under the locks of every blob involved, so retention never
// deletes a blob between the two. A path already recorded is left as it is. One
// transaction for a group rather than one per path is what makes an upload of
// thousands of small .drv files cheap.
//
// small holds blobs kept in PostgreSQL rather than in the blob store, by name (the
// narinfo URL without "nar/"): each is stored with the narinfo that points at it,
// and not when that path was recorded already. refs are the hash parts of paths
// outside the group that the group refers to: they must be in the cache, and are
// kept from retention until the group is committed (retention may have deleted one
// since the uploader last looked), or nothing is committed. A reference to a pending
// output counts only when it belongs to one of the grant's steps.
//
// grant is checked inside the transaction (see UploadGrant). A pending row (an output
// of a step not yet recorded as built) is replaced by a new upload of the same path;
// a row that is served is never changed.
func (db *DB) CommitNarinfos(ctx context.Context, ns []Narinfo, small map[string][]byte, refs []string, grant UploadGrant, commit func() error) error {
	if len(ns) == 0 {
		return nil
	}
	// Rows go in in one order (by hash part, blob name), so two groups sharing paths
	// wait for each other instead of deadlocking.
	ns = slices.Clone(ns)
	slices.SortFunc(ns, func(a, b Narinfo) int { return strings.Compare(a.HashPart, b.HashPart) })
	cols, err := narinfoArraysOf(ns)
	if err != nil {
		return err
	}
	steps := slices.Compact(slices.Sorted(slices.Values(grant.Steps)))
	if steps == nil {
		steps = []int64{}
	}
	return pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		// In one order (by lock key), so two groups sharing blobs cannot deadlock.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT
			hashtextextended('fc-blob:' || u, 0) AS k FROM unnest($1::text[]) AS u ORDER BY k) AS keys`, cols.url); err != nil {
			return fmt.Errorf("lock blobs: %w", err)
		}
		if err := checkGrant(ctx, tx, grant, steps); err != nil {
			return err
		}
		if err := holdReferences(ctx, tx, refs, steps); err != nil {
			return err
		}
		if err := commit(); err != nil {
			return err
		}
		if err := insertNarinfos(ctx, tx, cols, small); err != nil {
			return fmt.Errorf("insert %d narinfos: %w", len(ns), err)
		}
		return nil
	})
}

// narinfoArrays are narinfos column by column, as arrays for unnest.
type narinfoArrays struct {
	hash, path, url, comp, fileHash, narHash, refs, deriver, sigs, ca []string
	fileSize, narSize, pending                                        []int64
}

func narinfoArraysOf(ns []Narinfo) (narinfoArrays, error) {
	var cols narinfoArrays
	for _, n := range ns {
		for _, l := range [][]string{n.References, n.Sigs} {
			for _, v := range l {
				if v == "" || strings.ContainsAny(v, " \t\n") {
					return narinfoArrays{}, fmt.Errorf("narinfo %s: list element %q is empty or has white space", n.StorePath, v)
				}
			}
		}
		cols.hash = append(cols.hash, n.HashPart)
		cols.path = append(cols.path, n.StorePath)
		cols.url = append(cols.url, n.URL)
		cols.comp = append(cols.comp, n.Compression)
		cols.fileHash = append(cols.fileHash, n.FileHash)
		cols.fileSize = append(cols.fileSize, n.FileSize)
		cols.narHash = append(cols.narHash, n.NarHash)
		cols.narSize = append(cols.narSize, n.NarSize)
		// References and signatures never contain a space (store path basenames,
		// name:base64): each row's list travels as one space-separated string, since
		// PostgreSQL arrays cannot be ragged.
		cols.refs = append(cols.refs, strings.Join(n.References, " "))
		cols.deriver = append(cols.deriver, n.Deriver)
		cols.sigs = append(cols.sigs, strings.Join(n.Sigs, " "))
		cols.ca = append(cols.ca, n.CA)
		cols.pending = append(cols.pending, n.PendingStep)
	}
	return cols, nil
}

// holdReferences checks that every referenced path is in the cache (a pending one
// only when it is an output of the grant's steps) and keeps them there (FOR SHARE)
// until the transaction ends.
func holdReferences(ctx context.Context, tx pgx.Tx, refs []string, steps []int64) error {
	if len(refs) == 0 {
		return nil
	}
	refs = slices.Compact(slices.Sorted(slices.Values(refs)))
	rows, err := tx.Query(ctx, `SELECT hash_part FROM narinfos WHERE hash_part = ANY($1)
		AND (pending_step IS NULL OR pending_step = ANY($2)) ORDER BY hash_part FOR SHARE`, refs, steps)
	if err != nil {
		return fmt.Errorf("check references: %w", err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("check references: %w", err)
	}
	if len(found) != len(refs) {
		var missing []string
		for _, r := range refs {
			if !slices.Contains(found, r) {
				missing = append(missing, r)
			}
		}
		return fmt.Errorf("%w: referenced paths no longer in the cache: %s", ErrConflict, strings.Join(missing, ", "))
	}
	return nil
}

// insertNarinfos records the narinfos, and the small blobs of those that were not
// recorded already.
func insertNarinfos(ctx context.Context, tx pgx.Tx, cols narinfoArrays, small map[string][]byte) error {
	smallNames := slices.Sorted(maps.Keys(small))
	smallData := make([][]byte, 0, len(small))
	for _, name := range smallNames {
		smallData = append(smallData, small[name])
	}
	_, err := tx.Exec(ctx, `WITH added AS (
		INSERT INTO narinfos (hash_part, store_path, url, compression, file_hash, file_size,
			nar_hash, nar_size, refs, deriver, sigs, ca, pending_step)
		SELECT h, p, u, c, fh, fs, nh, ns, string_to_array(r, ' '), d, string_to_array(s, ' '), ca, nullif(ps, 0)
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[],
			$8::bigint[], $9::text[], $10::text[], $11::text[], $12::text[], $15::bigint[])
			AS t(h, p, u, c, fh, fs, nh, ns, r, d, s, ca, ps)
		ON CONFLICT (hash_part) DO UPDATE SET url = excluded.url, compression = excluded.compression,
			file_hash = excluded.file_hash, file_size = excluded.file_size, nar_hash = excluded.nar_hash,
			nar_size = excluded.nar_size, refs = excluded.refs, deriver = excluded.deriver, sigs = excluded.sigs,
			ca = excluded.ca, pending_step = excluded.pending_step, created_at = now(), last_used_at = now()
			WHERE narinfos.pending_step IS NOT NULL
		RETURNING url)
		INSERT INTO small_blobs (name, data)
		SELECT b.n, b.d FROM unnest($13::text[], $14::bytea[]) AS b(n, d)
		WHERE 'nar/' || b.n IN (SELECT url FROM added)
		ON CONFLICT (name) DO NOTHING`,
		cols.hash, cols.path, cols.url, cols.comp, cols.fileHash, cols.fileSize, cols.narHash, cols.narSize,
		cols.refs, cols.deriver, cols.sigs, cols.ca, smallNames, smallData, cols.pending)
	return err
}

// ErrUploadNotAllowed refuses a commit whose grant no longer holds: the agent was
// revoked, lost the push permission, or no longer holds the lease of a step.
var ErrUploadNotAllowed = errors.New("upload not allowed")

// checkGrant checks an upload's grant inside its commit. The agent's row and the
// steps' rows are held (FOR SHARE) until the commit, so a revocation or a lease
// change waits for it, or it sees them.
func checkGrant(ctx context.Context, tx pgx.Tx, g UploadGrant, steps []int64) error {
	if g.AgentID == 0 {
		return nil
	}
	var revoked, push bool
	err := tx.QueryRow(ctx, `SELECT revoked_at IS NOT NULL, push FROM agents WHERE id = $1 FOR SHARE`, g.AgentID).Scan(&revoked, &push)
	if err != nil {
		return fmt.Errorf("check the upload's agent %d: %w", g.AgentID, mapErr(err))
	}
	switch {
	case revoked:
		return fmt.Errorf("%w: agent %d was revoked", ErrUploadNotAllowed, g.AgentID)
	case g.Push && !push:
		return fmt.Errorf("%w: agent %d no longer has the push permission", ErrUploadNotAllowed, g.AgentID)
	}
	if len(steps) == 0 {
		return nil
	}
	rows, err := tx.Query(ctx, `SELECT id FROM steps WHERE id = ANY($1) AND agent_id = $2 AND status = 'running'
		ORDER BY id FOR SHARE`, steps, g.AgentID)
	if err != nil {
		return fmt.Errorf("check the upload's steps: %w", err)
	}
	held, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return fmt.Errorf("check the upload's steps: %w", err)
	}
	if len(held) != len(steps) {
		var lost []string
		for _, id := range steps {
			if !slices.Contains(held, id) {
				lost = append(lost, strconv.FormatInt(id, 10))
			}
		}
		return fmt.Errorf("%w: agent %d no longer holds the lease of step %s", ErrUploadNotAllowed, g.AgentID, strings.Join(lost, ", "))
	}
	return nil
}

// DeleteBlobIfUnused deletes a blob when no narinfo points at it: a small one from
// PostgreSQL, any other through del.
func (db *DB) DeleteBlobIfUnused(ctx context.Context, url string, del func() error) (bool, error) {
	deleted := false
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		if err := blobLock(ctx, tx, url); err != nil {
			return err
		}
		var used bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM narinfos WHERE url = $1)`, url).Scan(&used); err != nil {
			return err
		}
		if used {
			return nil
		}
		tag, err := tx.Exec(ctx, `DELETE FROM small_blobs WHERE name = $1`, strings.TrimPrefix(url, "nar/"))
		if err != nil {
			return err
		}
		if tag.RowsAffected() > 0 {
			deleted = true
			return nil
		}
		if err := del(); err != nil {
			return err
		}
		deleted = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("delete blob %s: %w", url, err)
	}
	return deleted, nil
}

// SetBuildKeep marks a build's outputs as kept (or not) by retention.
func (db *DB) SetBuildKeep(ctx context.Context, id int64, keep bool) error {
	tag, err := db.pool.Exec(ctx, `UPDATE builds SET keep = $2 WHERE id = $1`, id, keep)
	if err != nil {
		return fmt.Errorf("set build %d keep: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("set build %d keep: %w", id, ErrNotFound)
	}
	return nil
}

// BlobInUse reports whether a narinfo points at url.
func (db *DB) BlobInUse(ctx context.Context, url string) (bool, error) {
	var used bool
	if err := db.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM narinfos WHERE url = $1)`, url).Scan(&used); err != nil {
		return false, fmt.Errorf("blob %s in use: %w", url, err)
	}
	return used, nil
}

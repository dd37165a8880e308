package storage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrTokenInvalid is an enrollment token that is unknown, expired or used up.
var ErrTokenInvalid = errors.New("enrollment token is unknown, expired or used up")

// Agent is a builder that enrolled (or was registered) with its public key.
type Agent struct {
	ID                int64
	Name              string
	PublicKey         string
	Fingerprint       string
	Enabled           bool
	Draining          bool // an admin drained it: it gets no new work
	SelfDraining      bool // the agent is shutting down and finishing its work
	RevokedAt         *time.Time
	Connected         bool // a session reported within the presence window
	Coordinator       string
	LastSeenAt        *time.Time
	Systems           []string
	Features          []string
	MandatoryFeatures []string
	Roles             []string
	MaxJobs           int
	SpeedFactor       float64
	AgentVersion      string
	NixVersion        string
	Load1             float64
	FreeDiskBytes     int64
	Running           int
	CreatedAt         time.Time
	// Push lets the agent upload any path to the cache (fc-agent push), not only what
	// its leased work produced; an admin grants it.
	Push bool
	// ConsecutiveFailures counts its steps' infrastructure failures since its last
	// step with stored outputs (or an admin's enable); past the threshold it takes no
	// new step until DisabledUntil (AgentHealth).
	ConsecutiveFailures int
	DisabledUntil       *time.Time
	LastFailure         string
	// Declared names the config file that declares the agent's key ("": none).
	Declared string
}

// BackedOff says whether the agent is kept from new steps after infrastructure
// failures at now.
func (a Agent) BackedOff(now time.Time) bool {
	return a.DisabledUntil != nil && a.DisabledUntil.After(now)
}

// PresenceWindow is how long after its last heartbeat an agent still counts as
// connected, so a coordinator that died without saying so does not leave agents
// "connected" forever.
const PresenceWindow = 60 * time.Second

const agentColumns = `a.id, a.name, a.public_key, a.fingerprint, a.enabled, a.draining, a.self_draining, a.revoked_at,
	(a.connected AND a.revoked_at IS NULL AND a.last_seen_at > now() - make_interval(secs => $1)),
	a.coordinator, a.last_seen_at, a.systems, a.features, a.mandatory_features, a.roles, a.max_jobs,
	a.speed_factor, a.agent_version, a.nix_version, a.load1, a.free_disk_bytes,
	(SELECT count(*) FROM steps s WHERE s.agent_id = a.id AND s.status = 'running')
	 + (SELECT count(*) FROM evaluations e WHERE e.agent_id = a.id AND e.status = 'running'),
	a.created_at, a.push, a.consecutive_failures, a.disabled_until, a.last_failure, coalesce(a.declared, '')`

func scanAgent(row scanner) (Agent, error) {
	var a Agent
	err := row.Scan(&a.ID, &a.Name, &a.PublicKey, &a.Fingerprint, &a.Enabled, &a.Draining, &a.SelfDraining, &a.RevokedAt,
		&a.Connected, &a.Coordinator, &a.LastSeenAt, &a.Systems, &a.Features, &a.MandatoryFeatures, &a.Roles,
		&a.MaxJobs, &a.SpeedFactor, &a.AgentVersion, &a.NixVersion, &a.Load1, &a.FreeDiskBytes, &a.Running,
		&a.CreatedAt, &a.Push, &a.ConsecutiveFailures, &a.DisabledUntil, &a.LastFailure, &a.Declared)
	return a, err
}

var presenceSecs = PresenceWindow.Seconds()

// GetAgent finds an agent by id.
func (db *DB) GetAgent(ctx context.Context, id int64) (Agent, error) {
	a, err := scanAgent(db.pool.QueryRow(ctx, `SELECT `+agentColumns+` FROM agents a WHERE a.id = $2`, presenceSecs, id))
	if err != nil {
		return Agent{}, fmt.Errorf("get agent %d: %w", id, mapErr(err))
	}
	return a, nil
}

// AgentByFingerprint finds the agent that pinned a key.
func (db *DB) AgentByFingerprint(ctx context.Context, fp string) (Agent, error) {
	a, err := scanAgent(db.pool.QueryRow(ctx, `SELECT `+agentColumns+` FROM agents a WHERE a.fingerprint = $2`, presenceSecs, fp))
	if err != nil {
		return Agent{}, fmt.Errorf("agent with key %s: %w", fp, mapErr(err))
	}
	return a, nil
}

// ListAgents returns a page of agents, newest first; revoked agents are listed too.
func (db *DB) ListAgents(ctx context.Context, page Page) ([]Agent, int64, error) {
	var total int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM agents`).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count agents: %w", err)
	}
	rows, err := db.pool.Query(ctx, `SELECT `+agentColumns+` FROM agents a ORDER BY a.id DESC LIMIT $2 OFFSET $3`,
		presenceSecs, page.Limit, page.Offset)
	if err != nil {
		return nil, 0, fmt.Errorf("list agents: %w", err)
	}
	items, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Agent, error) { return scanAgent(r) })
	if err != nil {
		return nil, 0, fmt.Errorf("list agents: %w", err)
	}
	return items, total, nil
}

// EnrollmentToken is a stored token; the token itself is shown once at creation.
type EnrollmentToken struct {
	ID        int64
	Name      string
	UsesLeft  int
	ExpiresAt time.Time
	CreatedAt time.Time
}

// CreateEnrollmentToken stores a token's hash.
func (db *DB) CreateEnrollmentToken(ctx context.Context, name string, uses int, expiresAt time.Time, hash []byte) (EnrollmentToken, error) {
	var t EnrollmentToken
	err := db.pool.QueryRow(ctx, `INSERT INTO enrollment_tokens (name, uses_left, expires_at, token_hash)
		VALUES ($1, $2, $3, $4) RETURNING id, name, uses_left, expires_at, created_at`, name, uses, expiresAt, hash).
		Scan(&t.ID, &t.Name, &t.UsesLeft, &t.ExpiresAt, &t.CreatedAt)
	if err != nil {
		return EnrollmentToken{}, fmt.Errorf("create enrollment token: %w", mapErr(err))
	}
	return t, nil
}

// AgentNameTakenError is a name that an agent that is not revoked already has.
type AgentNameTakenError struct {
	Name    string
	AgentID int64
}

func (e *AgentNameTakenError) Error() string {
	return fmt.Sprintf("agent name %q is taken by agent %d", e.Name, e.AgentID)
}

// Unwrap makes a taken name an ErrConflict.
func (e *AgentNameTakenError) Unwrap() error { return ErrConflict }

// agentNameIndex is the unique index on the names of agents that are not revoked.
const agentNameIndex = "agents_name_active"

// nameTaken turns a violation of agentNameIndex by name into an *AgentNameTakenError
// naming the agent that holds it; other errors pass through.
func (db *DB) nameTaken(ctx context.Context, name string, err error) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "23505" || pe.ConstraintName != agentNameIndex {
		return err
	}
	var holder int64
	if qerr := db.pool.QueryRow(ctx, `SELECT id FROM agents WHERE name = $1 AND revoked_at IS NULL`, name).Scan(&holder); qerr != nil {
		return fmt.Errorf("%w: agent name %q is taken", ErrConflict, name) // its holder was revoked meanwhile
	}
	return &AgentNameTakenError{Name: name, AgentID: holder}
}

// EnrollAgent spends one use of the token and pins the key, in one transaction. The
// agent's name is what name returns given the token's name; an error from name, a
// name another agent that is not revoked has (*AgentNameTakenError), and a key that
// is already known (including a revoked one: ErrConflict) all spend nothing.
func (db *DB) EnrollAgent(ctx context.Context, tokenHash []byte, name func(tokenName string) (string, error), publicKey, fingerprint string) (Agent, error) {
	var id int64
	var chosen string
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		var tokenName string
		err := tx.QueryRow(ctx, `UPDATE enrollment_tokens SET uses_left = uses_left - 1
			WHERE token_hash = $1 AND uses_left > 0 AND expires_at > now() RETURNING name`, tokenHash).Scan(&tokenName)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrTokenInvalid
		}
		if err != nil {
			return err
		}
		if chosen, err = name(tokenName); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `INSERT INTO agents (name, public_key, fingerprint) VALUES ($1, $2, $3) RETURNING id`,
			chosen, publicKey, fingerprint).Scan(&id)
	})
	if err != nil {
		return Agent{}, fmt.Errorf("enroll agent %q: %w", chosen, mapErr(db.nameTaken(ctx, chosen, err)))
	}
	return db.GetAgent(ctx, id)
}

// RegisterAgent pins a key an admin supplied, without a token; a name another agent
// that is not revoked has is *AgentNameTakenError.
func (db *DB) RegisterAgent(ctx context.Context, name, publicKey, fingerprint string) (Agent, error) {
	var id int64
	err := db.pool.QueryRow(ctx, `INSERT INTO agents (name, public_key, fingerprint) VALUES ($1, $2, $3) RETURNING id`,
		name, publicKey, fingerprint).Scan(&id)
	if err != nil {
		return Agent{}, fmt.Errorf("register agent %q: %w", name, mapErr(db.nameTaken(ctx, name, err)))
	}
	return db.GetAgent(ctx, id)
}

// RevokeAgent marks an agent revoked for good; its key stays pinned so it cannot
// enroll again, and its cache read token is forgotten.
func (db *DB) RevokeAgent(ctx context.Context, id int64) error {
	tag, err := db.pool.Exec(ctx, `UPDATE agents SET revoked_at = coalesce(revoked_at, now()), connected = false,
		enabled = false, cache_token_hash = NULL WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("revoke agent %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("revoke agent %d: %w", id, ErrNotFound)
	}
	return nil
}

// SetAgentState changes the admin flags: drain (no new work) and enable/disable.
// Enabling also ends a drain.
func (db *DB) SetAgentState(ctx context.Context, id int64, enabled, draining bool) (Agent, error) {
	tag, err := db.pool.Exec(ctx, `UPDATE agents SET enabled = $2, draining = $3 WHERE id = $1 AND revoked_at IS NULL`,
		id, enabled, draining)
	if err != nil {
		return Agent{}, fmt.Errorf("set agent %d state: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return Agent{}, fmt.Errorf("set agent %d state: %w", id, ErrNotFound)
	}
	return db.GetAgent(ctx, id)
}

// AgentPresence is what a session reports about its agent.
type AgentPresence struct {
	Coordinator       string
	Systems           []string
	Features          []string
	MandatoryFeatures []string
	Roles             []string
	MaxJobs           int
	SpeedFactor       float64
	AgentVersion      string
	NixVersion        string
	SelfDraining      bool
}

// AgentConnected records a new session and the capabilities it advertised.
func (db *DB) AgentConnected(ctx context.Context, id int64, p AgentPresence) error {
	_, err := db.pool.Exec(ctx, `UPDATE agents SET connected = true, coordinator = $2, last_seen_at = now(),
		systems = $3, features = $4, mandatory_features = $5, roles = $6, max_jobs = $7, speed_factor = $8,
		agent_version = $9, nix_version = $10, self_draining = $11 WHERE id = $1`,
		id, p.Coordinator, nonNil(p.Systems), nonNil(p.Features), nonNil(p.MandatoryFeatures), nonNil(p.Roles),
		p.MaxJobs, p.SpeedFactor, p.AgentVersion, p.NixVersion, p.SelfDraining)
	if err != nil {
		return fmt.Errorf("record agent %d connected: %w", id, err)
	}
	return nil
}

// SetAgentCacheToken replaces the hash of the agent's cache read token (each daemon
// session gets a new token: the one before stops working). A revoked agent gets none:
// ErrNotFound.
func (db *DB) SetAgentCacheToken(ctx context.Context, id int64, hash []byte) error {
	tag, err := db.pool.Exec(ctx, `UPDATE agents SET cache_token_hash = $2 WHERE id = $1 AND revoked_at IS NULL`, id, hash)
	if err != nil {
		return fmt.Errorf("set agent %d cache token: %w", id, mapErr(err))
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("set agent %d cache token: %w", id, ErrNotFound)
	}
	return nil
}

// AgentByCacheToken finds the agent, not revoked, whose current cache read token has
// this hash: its id and name. Any other hash is ErrNotFound.
func (db *DB) AgentByCacheToken(ctx context.Context, hash []byte) (id int64, name string, err error) {
	err = db.pool.QueryRow(ctx, `SELECT id, name FROM agents WHERE cache_token_hash = $1 AND revoked_at IS NULL`, hash).
		Scan(&id, &name)
	if err != nil {
		return 0, "", fmt.Errorf("look up agent cache token: %w", mapErr(err))
	}
	return id, name, nil
}

// AgentHeartbeat records a heartbeat's resource report and whether the agent is
// shutting down, and says whether the agent was revoked meanwhile (one round trip).
func (db *DB) AgentHeartbeat(ctx context.Context, id int64, coordinator string, load1 float64, freeDisk int64, draining bool) (revoked bool, err error) {
	// Agents also beat whenever work ends, several times a second on a busy builder:
	// the row is written only when what it says changed (free disk by more than 1%)
	// or it is more than a few seconds old, well within presence's window.
	err = db.pool.QueryRow(ctx, `WITH cur AS (SELECT revoked_at IS NOT NULL AS revoked FROM agents WHERE id = $1),
		upd AS (UPDATE agents SET last_seen_at = now(), connected = true, coordinator = $2,
			load1 = $3, free_disk_bytes = $4, self_draining = $5
			WHERE id = $1 AND (last_seen_at IS NULL OR last_seen_at < now() - interval '5 seconds'
				OR NOT connected OR coordinator IS DISTINCT FROM $2 OR load1 IS DISTINCT FROM $3
				OR self_draining IS DISTINCT FROM $5 OR free_disk_bytes IS NULL
				OR abs(free_disk_bytes - $4::bigint) > $4::bigint / 100))
		SELECT revoked FROM cur`,
		id, coordinator, load1, freeDisk, draining).Scan(&revoked)
	if errors.Is(err, pgx.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return false, fmt.Errorf("record agent %d heartbeat: %w", id, mapErr(err))
	}
	return revoked, nil
}

// AgentDisconnected records the end of a session, unless a newer session on another
// coordinator has taken over.
func (db *DB) AgentDisconnected(ctx context.Context, id int64, coordinator string) error {
	_, err := db.pool.Exec(ctx, `UPDATE agents SET connected = false, last_seen_at = now()
		WHERE id = $1 AND coordinator = $2`, id, coordinator)
	if err != nil {
		return fmt.Errorf("record agent %d disconnected: %w", id, err)
	}
	return nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// SetAgentPush grants (or withdraws) an agent's push permission.
func (db *DB) SetAgentPush(ctx context.Context, id int64, push bool) (Agent, error) {
	tag, err := db.pool.Exec(ctx, `UPDATE agents SET push = $2 WHERE id = $1`, id, push)
	if err != nil {
		return Agent{}, fmt.Errorf("set agent %d push: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return Agent{}, fmt.Errorf("set agent %d push: %w", id, ErrNotFound)
	}
	return db.GetAgent(ctx, id)
}

// DispatchableAgents says which of ids may be handed steps now, in one statement:
// enabled, not draining (by an admin or by itself), not revoked, not backed off
// after infrastructure failures.
func (db *DB) DispatchableAgents(ctx context.Context, ids []int64) (map[int64]bool, error) {
	rows, err := db.pool.Query(ctx, `SELECT id FROM agents WHERE id = ANY($1) AND enabled AND NOT draining
		AND NOT self_draining AND revoked_at IS NULL AND (disabled_until IS NULL OR disabled_until <= now())`, ids)
	if err != nil {
		return nil, fmt.Errorf("dispatchable agents: %w", err)
	}
	ok, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("dispatchable agents: %w", err)
	}
	out := make(map[int64]bool, len(ok))
	for _, id := range ok {
		out[id] = true
	}
	return out, nil
}

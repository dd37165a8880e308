-- +goose Up
-- FC's data model (docs/ARCHITECTURE.md says what each table holds). Statuses are names
-- (the README lists them); status_code carries Hydra's number once a build or step has
-- finished.

CREATE TABLE roles (
    name        text PRIMARY KEY,
    description text NOT NULL
);
INSERT INTO roles (name, description) VALUES
    ('admin',           'full access to every endpoint'),
    ('read-only',       'read access only'),
    ('create-projects', 'create projects and jobsets'),
    ('eval-jobset',     'trigger evaluations'),
    ('cancel-build',    'cancel builds'),
    ('restart-jobs',    'restart failed or finished builds'),
    ('bump-to-front',   'bump build priority');

CREATE TABLE users (
    id            bigserial PRIMARY KEY,
    username      text NOT NULL UNIQUE,
    email         text NOT NULL DEFAULT '',
    full_name     text NOT NULL DEFAULT '',
    password_hash text NOT NULL,              -- argon2id, PHC string format
    role          text NOT NULL REFERENCES roles (name),
    enabled       boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz
);

CREATE TABLE api_keys (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL,
    key_hash     bytea NOT NULL UNIQUE,       -- sha256 of the key; the key itself is shown once
    role         text NOT NULL REFERENCES roles (name),
    user_id      bigint REFERENCES users (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz
);

CREATE TABLE sessions (
    token_hash  bytea PRIMARY KEY,            -- sha256 of the cookie value
    user_id     bigint REFERENCES users (id) ON DELETE CASCADE,
    api_key_id  bigint REFERENCES api_keys (id) ON DELETE CASCADE,
    csrf_token  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    CHECK (user_id IS NOT NULL OR api_key_id IS NOT NULL)
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);

CREATE TABLE projects (
    id                bigserial PRIMARY KEY,
    name              text NOT NULL UNIQUE,
    display_name      text NOT NULL DEFAULT '',
    description       text NOT NULL DEFAULT '',
    repository_url    text NOT NULL,
    enabled           boolean NOT NULL DEFAULT true,
    webhook_secret    text,                   -- write-only through the API
    fetch_credentials jsonb,                  -- write-only: ssh deploy key or https token
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobsets (
    id                   bigserial PRIMARY KEY,
    project_id           bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name                 text NOT NULL,
    description          text NOT NULL DEFAULT '',
    branch               text NOT NULL DEFAULT '',
    flake_mode           boolean NOT NULL DEFAULT true,
    nix_expression       text NOT NULL DEFAULT 'hydraJobs',
    check_interval       integer NOT NULL DEFAULT 60 CHECK (check_interval >= 0),
    scheduling_shares    integer NOT NULL DEFAULT 100 CHECK (scheduling_shares > 0),
    state                text NOT NULL DEFAULT 'enabled'
                         CHECK (state IN ('enabled', 'disabled', 'one_shot', 'one_at_a_time')),
    keep_nr              integer NOT NULL DEFAULT 3 CHECK (keep_nr >= 0),
    last_checked_at      timestamptz,
    last_check_error     text NOT NULL DEFAULT '',
    trigger_requested_at timestamptz,          -- set by webhooks and the API trigger
    trigger_forced       boolean NOT NULL DEFAULT false,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);
CREATE INDEX jobsets_due ON jobsets (state, last_checked_at);

CREATE TABLE jobset_inputs (
    jobset_id bigint NOT NULL REFERENCES jobsets (id) ON DELETE CASCADE,
    name      text NOT NULL,
    type      text NOT NULL CHECK (type IN ('string', 'boolean', 'git', 'path')),
    value     text NOT NULL,
    PRIMARY KEY (jobset_id, name)
);

CREATE TABLE agents (
    id                 bigserial PRIMARY KEY,
    name               text NOT NULL,
    public_key         text NOT NULL,          -- authorized_keys line, pinned at enrollment
    fingerprint        text NOT NULL UNIQUE,   -- SHA256:...; stays after revocation
    enabled            boolean NOT NULL DEFAULT true,
    draining           boolean NOT NULL DEFAULT false, -- set by an admin: no new work
    self_draining      boolean NOT NULL DEFAULT false, -- the agent is shutting down (SIGTERM)
    revoked_at         timestamptz,
    connected          boolean NOT NULL DEFAULT false,
    coordinator        text NOT NULL DEFAULT '',
    last_seen_at       timestamptz,
    systems            text[] NOT NULL DEFAULT '{}',
    features           text[] NOT NULL DEFAULT '{}',
    mandatory_features text[] NOT NULL DEFAULT '{}',
    roles              text[] NOT NULL DEFAULT '{build,eval}',
    max_jobs           integer NOT NULL DEFAULT 1,
    speed_factor       double precision NOT NULL DEFAULT 1,
    agent_version      text NOT NULL DEFAULT '',
    nix_version        text NOT NULL DEFAULT '',
    load1              double precision NOT NULL DEFAULT 0,
    free_disk_bytes    bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE enrollment_tokens (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL,
    token_hash bytea NOT NULL UNIQUE,
    uses_left  integer NOT NULL CHECK (uses_left >= 0),
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Evaluations are leased to agents with the eval role, like steps.
CREATE TABLE evaluations (
    id               bigserial PRIMARY KEY,
    jobset_id        bigint NOT NULL REFERENCES jobsets (id) ON DELETE CASCADE,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    commit           text NOT NULL DEFAULT '',
    inputs_hash      text NOT NULL DEFAULT '',
    trigger          text NOT NULL DEFAULT '',   -- poll, webhook, api
    forced           boolean NOT NULL DEFAULT false,
    error            text NOT NULL DEFAULT '',
    nr_jobs          integer NOT NULL DEFAULT 0,
    nr_new_builds    integer NOT NULL DEFAULT 0,
    nr_errors        integer NOT NULL DEFAULT 0,
    checkout_seconds double precision,
    eval_seconds     double precision,
    agent_id         bigint REFERENCES agents (id) ON DELETE SET NULL,
    lease_epoch      bigint NOT NULL DEFAULT 0,
    lease_expires_at timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    not_before       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);
CREATE INDEX evaluations_jobset ON evaluations (jobset_id, id DESC);
CREATE INDEX evaluations_claimable ON evaluations (not_before, id) WHERE status = 'queued';
CREATE INDEX evaluations_running ON evaluations (agent_id) WHERE status = 'running';

CREATE TABLE evaluation_inputs (
    evaluation_id bigint NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    name          text NOT NULL,
    type          text NOT NULL,
    value         text NOT NULL,
    revision      text NOT NULL DEFAULT '',
    PRIMARY KEY (evaluation_id, name)
);

CREATE TABLE evaluation_errors (
    evaluation_id bigint NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    attr          text NOT NULL,
    message       text NOT NULL,
    PRIMARY KEY (evaluation_id, attr)
);

-- One step per derivation that must be built, shared by every build and evaluation
-- that needs it (deduplicated by drv_path).
CREATE TABLE steps (
    id                 bigserial PRIMARY KEY,
    drv_path           text NOT NULL UNIQUE,
    system             text NOT NULL,
    required_features  text[] NOT NULL DEFAULT '{}',
    prefer_local_build boolean NOT NULL DEFAULT false,
    status             text NOT NULL DEFAULT 'queued',
    status_code        integer,
    error              text NOT NULL DEFAULT '',
    timeout_seconds    integer,
    max_silent_seconds integer,
    global_priority    integer NOT NULL DEFAULT 0,     -- raised by bump
    critical_path      integer NOT NULL DEFAULT 0,     -- longest chain of dependents
    agent_id           bigint REFERENCES agents (id) ON DELETE SET NULL,
    lease_epoch        bigint NOT NULL DEFAULT 0,
    lease_expires_at   timestamptz,
    attempts           integer NOT NULL DEFAULT 0,
    not_before         timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    started_at         timestamptz,
    finished_at        timestamptz
);
CREATE INDEX steps_queued ON steps (global_priority DESC, id) WHERE status = 'queued';
CREATE INDEX steps_running ON steps (agent_id) WHERE status = 'running';

CREATE TABLE step_edges (
    step_id    bigint NOT NULL REFERENCES steps (id) ON DELETE CASCADE,  -- the dependent
    depends_on bigint NOT NULL REFERENCES steps (id) ON DELETE CASCADE,  -- its input
    PRIMARY KEY (step_id, depends_on)
);
CREATE INDEX step_edges_reverse ON step_edges (depends_on);

CREATE TABLE step_outputs (
    step_id bigint NOT NULL REFERENCES steps (id) ON DELETE CASCADE,
    name    text NOT NULL,
    path    text NOT NULL,
    PRIMARY KEY (step_id, name)
);
CREATE INDEX step_outputs_path ON step_outputs (path);

-- Outputs whose build failed: a later step for them ends cached_failure until restarted.
CREATE TABLE failed_paths (
    path       text PRIMARY KEY,
    step_id    bigint REFERENCES steps (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One build per job per evaluation.
CREATE TABLE builds (
    id                  bigserial PRIMARY KEY,
    evaluation_id       bigint NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    jobset_id           bigint NOT NULL REFERENCES jobsets (id) ON DELETE CASCADE,
    job                 text NOT NULL,           -- dotted attribute path
    drv_path            text NOT NULL,
    step_id             bigint REFERENCES steps (id) ON DELETE SET NULL, -- NULL: already built
    system              text NOT NULL,
    nix_name            text NOT NULL DEFAULT '',
    description         text NOT NULL DEFAULT '',
    license             text NOT NULL DEFAULT '',
    homepage            text NOT NULL DEFAULT '',
    release_name        text NOT NULL DEFAULT '',
    scheduling_priority integer NOT NULL DEFAULT 100,
    is_aggregate        boolean NOT NULL DEFAULT false,
    keep                boolean NOT NULL DEFAULT false,
    status              text NOT NULL DEFAULT 'queued',
    status_code         integer,
    propagated_from     bigint REFERENCES builds (id) ON DELETE SET NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    UNIQUE (evaluation_id, job)
);
CREATE INDEX builds_jobset ON builds (jobset_id, id DESC);
CREATE INDEX builds_status ON builds (status, id DESC);
CREATE INDEX builds_step ON builds (step_id);
CREATE INDEX builds_job ON builds (jobset_id, job, id DESC);

CREATE TABLE build_outputs (
    build_id bigint NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    name     text NOT NULL,
    path     text NOT NULL,
    PRIMARY KEY (build_id, name)
);

CREATE TABLE aggregate_constituents (
    aggregate_id   bigint NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    constituent_id bigint NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    PRIMARY KEY (aggregate_id, constituent_id)
);

CREATE TABLE build_products (
    build_id     bigint NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    nr           integer NOT NULL,
    type         text NOT NULL,
    subtype      text NOT NULL DEFAULT '',
    name         text NOT NULL DEFAULT '',
    path         text NOT NULL,
    default_path text NOT NULL DEFAULT '',
    file_size    bigint,
    sha256       text NOT NULL DEFAULT '',
    PRIMARY KEY (build_id, nr)
);

CREATE TABLE build_metrics (
    build_id bigint NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    name     text NOT NULL,
    value    double precision NOT NULL,
    unit     text NOT NULL DEFAULT '',
    PRIMARY KEY (build_id, name)
);

CREATE TABLE step_logs (
    step_id    bigint PRIMARY KEY REFERENCES steps (id) ON DELETE CASCADE,
    size       bigint NOT NULL DEFAULT 0,
    finished   boolean NOT NULL DEFAULT false,
    compressed boolean NOT NULL DEFAULT false,
    truncated  boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE channels (
    id                    bigserial PRIMARY KEY,
    name                  text NOT NULL UNIQUE,
    project_id            bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    jobset_id             bigint REFERENCES jobsets (id) ON DELETE CASCADE,
    current_evaluation_id bigint REFERENCES evaluations (id) ON DELETE SET NULL,
    created_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE starred_jobs (
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    jobset_id  bigint NOT NULL REFERENCES jobsets (id) ON DELETE CASCADE,
    job        text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, jobset_id, job)
);

-- The binary cache's metadata; blobs live in the blob store.
CREATE TABLE narinfos (
    hash_part     text PRIMARY KEY,            -- the 32-character nixbase32 part of the path
    store_path    text NOT NULL UNIQUE,
    url           text NOT NULL,               -- nar/<filehash>.nar.zst
    compression   text NOT NULL,
    file_hash     text NOT NULL,
    file_size     bigint NOT NULL,
    nar_hash      text NOT NULL,
    nar_size      bigint NOT NULL,
    refs          text[] NOT NULL DEFAULT '{}', -- basenames
    deriver       text NOT NULL DEFAULT '',
    sigs          text[] NOT NULL DEFAULT '{}',
    ca            text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX narinfos_url ON narinfos (url);

-- +goose Down
DROP TABLE narinfos, starred_jobs, channels, step_logs, build_metrics, build_products,
    aggregate_constituents, build_outputs, builds, failed_paths, step_outputs, step_edges,
    steps, evaluation_errors, evaluation_inputs, evaluations, enrollment_tokens, agents,
    jobset_inputs, jobsets, projects, sessions, api_keys, users, roles;

-- +goose Up
-- Search (GET /api/v1/search, /search): projects, jobsets and jobs by a part of their
-- name, builds by a .drv or output path, its hash part or a prefix of either.
--
-- Names are matched anywhere (ILIKE '%q%'): trigram indexes (pg_trgm, a trusted
-- extension since PostgreSQL 13, so the database's owner may create it).
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX projects_name_trgm ON projects USING gin (name gin_trgm_ops, display_name gin_trgm_ops);
CREATE INDEX jobsets_name_trgm ON jobsets USING gin (name gin_trgm_ops);

-- A job is a (jobset, attribute) pair, and every evaluation adds a build of each: a
-- million builds may hold ten thousand jobs. Searching jobs through builds would read
-- (and de-duplicate) every build of every matching job, so the distinct pairs are
-- kept here, one row per job, filled by a statement trigger on builds (ingest inserts
-- one evaluation's builds in one statement, so this is one INSERT per evaluation).
-- A job stays while its jobset does, as Hydra keeps a job its builds left.
CREATE TABLE jobs (
    jobset_id bigint NOT NULL REFERENCES jobsets (id) ON DELETE CASCADE,
    name      text NOT NULL,
    PRIMARY KEY (jobset_id, name)
);
CREATE INDEX jobs_name_trgm ON jobs USING gin (name gin_trgm_ops);

-- +goose StatementBegin
CREATE FUNCTION jobs_of_new_builds() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- In key order, so two evaluations inserting the same jobs cannot deadlock.
    INSERT INTO jobs (jobset_id, name)
    SELECT DISTINCT jobset_id, job FROM new_builds ORDER BY 1, 2
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER builds_jobs AFTER INSERT ON builds REFERENCING NEW TABLE AS new_builds
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_of_new_builds();
INSERT INTO jobs (jobset_id, name) SELECT DISTINCT jobset_id, job FROM builds ON CONFLICT DO NOTHING;

-- Store paths are matched by prefix ('/nix/store/<hash prefix>'): btree ranges in
-- byte order (text_pattern_ops, whatever the database's collation). A short prefix
-- matches thousands of paths among a million; the ids they carry (INCLUDE) let the
-- search rank them without reading a row, and read only the page's builds.
CREATE INDEX builds_drv_path_prefix ON builds (drv_path text_pattern_ops) INCLUDE (id);
CREATE INDEX build_outputs_path_prefix ON build_outputs (path text_pattern_ops) INCLUDE (build_id, name);

-- +goose Down
DROP INDEX build_outputs_path_prefix, builds_drv_path_prefix;
DROP TRIGGER builds_jobs ON builds;
DROP FUNCTION jobs_of_new_builds();
DROP TABLE jobs;
DROP INDEX jobsets_name_trgm, projects_name_trgm;
-- The extension stays: other objects may use it by now.

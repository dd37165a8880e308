-- +goose Up
-- Builds reused across evaluations (issue 18), as Hydra does: a job whose derivation
-- already has a build in its jobset joins a new evaluation as that build. Which
-- evaluations a build belongs to is this link; builds.evaluation_id stays the one that
-- created it.
CREATE TABLE evaluation_builds (
    evaluation_id bigint NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    build_id      bigint NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    PRIMARY KEY (evaluation_id, build_id)
);
CREATE INDEX evaluation_builds_build ON evaluation_builds (build_id);
INSERT INTO evaluation_builds (evaluation_id, build_id) SELECT evaluation_id, id FROM builds;

-- A new build belongs to the evaluation that creates it, however it is inserted (one
-- statement-level insert per statement, so a 10,000-job evaluation pays once).
-- +goose StatementBegin
CREATE FUNCTION builds_link_evaluation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO evaluation_builds (evaluation_id, build_id) SELECT evaluation_id, id FROM new_builds
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER builds_link_evaluation AFTER INSERT ON builds REFERENCING NEW TABLE AS new_builds
    FOR EACH STATEMENT EXECUTE FUNCTION builds_link_evaluation();

-- The lookup of a job's earlier build of the same derivation.
CREATE INDEX builds_reuse ON builds (jobset_id, job, drv_path, id DESC);

-- +goose Down
DROP TRIGGER builds_link_evaluation ON builds;
DROP FUNCTION builds_link_evaluation();
DROP INDEX builds_reuse;
DROP TABLE evaluation_builds;

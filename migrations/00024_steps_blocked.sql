-- +goose Up
-- A queued step waiting for an input to be built is marked blocked, so the claim reads
-- runnable steps only (steps_ready) instead of testing every queued step's inputs:
-- with a 1,000-step DAG whose front layer is running, each claim walked ~950 blocked
-- steps (4.7 ms a claim). An evaluation inserts a step with inputs blocked; a
-- finished input's dependents, an evaluation's blocked steps after its commit, and
-- the build sweep clear the mark once every input succeeded (storage.unblock). The
-- claim still checks the inputs, so a mark cleared early costs nothing but a test.
ALTER TABLE steps ADD COLUMN blocked boolean NOT NULL DEFAULT false;
UPDATE steps s SET blocked = true WHERE s.status = 'queued'
    AND EXISTS (SELECT 1 FROM step_edges e JOIN steps d ON d.id = e.depends_on WHERE e.step_id = s.id AND d.status <> 'succeeded');
CREATE INDEX steps_ready ON steps (jobset_id, global_priority DESC, scheduling_priority DESC, critical_path DESC, id)
    WHERE status = 'queued' AND NOT blocked;
-- The build sweep's look at every blocked queued step (a safety net for a clearing
-- missed: a coordinator stopped between a commit and its clearing).
CREATE INDEX steps_blocked ON steps (id) WHERE blocked AND status = 'queued';

-- +goose Down
DROP INDEX steps_blocked, steps_ready;
ALTER TABLE steps DROP COLUMN blocked;

-- +goose Up
-- Scheduling data on steps: a step serves the builds of many evaluations, so it keeps
-- the highest meta.schedulingPriority and the jobset that first needed it (for the
-- share order), both propagated to its whole dependency closure at ingest.
ALTER TABLE steps ADD COLUMN jobset_id bigint REFERENCES jobsets (id) ON DELETE SET NULL;
ALTER TABLE steps ADD COLUMN scheduling_priority integer NOT NULL DEFAULT 100;
ALTER TABLE steps ADD COLUMN exit_code integer;
ALTER TABLE steps ADD COLUMN log_size bigint NOT NULL DEFAULT 0;
CREATE INDEX steps_runnable ON steps (status, system) WHERE status = 'queued';
CREATE INDEX builds_finished ON builds (jobset_id, finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX builds_aggregate ON builds (evaluation_id) WHERE is_aggregate;
CREATE INDEX aggregate_constituents_reverse ON aggregate_constituents (constituent_id);

-- +goose Down
DROP INDEX aggregate_constituents_reverse, builds_aggregate, builds_finished, steps_runnable;
ALTER TABLE steps DROP COLUMN log_size, DROP COLUMN exit_code, DROP COLUMN scheduling_priority, DROP COLUMN jobset_id;

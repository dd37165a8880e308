-- +goose Up
-- Builder health (issue 18): an agent counts its consecutive infrastructure failures
-- (steps it reported as such or lost with their lease; not work it released while
-- shutting down); past [queue_runner] agent_failure_threshold it takes no new step until
-- disabled_until, a backoff that doubles with each further failure, as Hydra disables machines.
-- A step whose outputs it stored, or an admin's enable, resets both.
ALTER TABLE agents
    ADD COLUMN consecutive_failures integer NOT NULL DEFAULT 0,
    ADD COLUMN disabled_until timestamptz,
    ADD COLUMN last_failure text NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE agents DROP COLUMN consecutive_failures, DROP COLUMN disabled_until, DROP COLUMN last_failure;

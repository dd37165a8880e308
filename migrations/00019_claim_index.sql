-- +goose Up
-- The claim (storage.ClaimSteps) takes each competing jobset's runnable steps in
-- scheduling order from this index and stops at the few it needs, instead of
-- sorting every queued step (100,000 queued: seconds per claim).
CREATE INDEX steps_claim ON steps (jobset_id, global_priority DESC, scheduling_priority DESC, critical_path DESC, id)
    WHERE status = 'queued';

-- +goose Down
DROP INDEX steps_claim;

-- +goose Up
-- Channels (Hydra's): a channel follows a jobset and points at its newest evaluation
-- whose builds all succeeded, or whose aggregate job (when named) succeeded.
ALTER TABLE channels
    ADD COLUMN aggregate  text NOT NULL DEFAULT '',
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
-- Channels could only be made by hand before; one that follows no jobset never advances.
DELETE FROM channels WHERE jobset_id IS NULL;
ALTER TABLE channels ALTER COLUMN jobset_id SET NOT NULL;
CREATE INDEX channels_jobset ON channels (jobset_id);

-- +goose Down
DROP INDEX channels_jobset;
ALTER TABLE channels ALTER COLUMN jobset_id DROP NOT NULL;
ALTER TABLE channels DROP COLUMN updated_at, DROP COLUMN aggregate;

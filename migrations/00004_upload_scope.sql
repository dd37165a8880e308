-- +goose Up
-- Uploads are scoped to work (docs/SECURITY.md): an agent may put into the cache the
-- outputs of a step leased to it, the content-addressed .drv closure of an evaluation
-- leased to it, or anything only when an admin granted it the push permission.
ALTER TABLE agents ADD COLUMN push boolean NOT NULL DEFAULT false;

-- A step's outputs are uploaded before the step reports, but they are signed and
-- served only once its success is recorded: until then their row names the step and
-- carries no signature. Every lookup that serves or counts paths skips such rows.
ALTER TABLE narinfos ADD COLUMN pending_step bigint REFERENCES steps (id) ON DELETE CASCADE;
CREATE INDEX narinfos_pending ON narinfos (pending_step) WHERE pending_step IS NOT NULL;

-- The content address a fixed-output derivation declares for an output
-- ("fixed:r:sha256:<nixbase32>", "fixed:sha256:…"), empty for input-addressed outputs:
-- an upload of that output must have exactly this content.
ALTER TABLE step_outputs ADD COLUMN ca text NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE step_outputs DROP COLUMN ca;
-- Unsigned rows must not become visible.
DELETE FROM narinfos WHERE pending_step IS NOT NULL;
DROP INDEX narinfos_pending;
ALTER TABLE narinfos DROP COLUMN pending_step;
ALTER TABLE agents DROP COLUMN push;

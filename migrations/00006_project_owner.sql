-- +goose Up
-- Ownership, as in Hydra: a project belongs to the API key that created it. A key with
-- the create-projects role manages (changes, deletes, and adds, changes and deletes the
-- jobsets of) the projects it owns and no others; admins manage all.
--
-- Projects that existed before have no owner, and so only admins manage them. When the
-- owning key is deleted the project stays and loses its owner (ON DELETE SET NULL):
-- revoking a key must always be possible, must not delete what it built, and must not
-- leave the project to whichever key is created next.
ALTER TABLE projects ADD COLUMN owner_key_id bigint REFERENCES api_keys (id) ON DELETE SET NULL;
-- Deleting a key looks up the projects it owns.
CREATE INDEX projects_owner_key_id ON projects (owner_key_id) WHERE owner_key_id IS NOT NULL;

-- +goose Down
DROP INDEX projects_owner_key_id;
ALTER TABLE projects DROP COLUMN owner_key_id;

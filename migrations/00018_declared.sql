-- +goose Up
-- Declarative configuration (issue 18). `declared` names where an object is declared:
-- the coordinator's config file (an absolute path) for projects, jobsets, API keys,
-- agents and users, or "repository:<project>/<file>" for jobsets a project's repository
-- declares (.fc.toml); NULL when the object is managed through the API. The API refuses
-- to change declared objects (409 naming the source). Applying the config again finds
-- them by name, so a restart creates no duplicates.
ALTER TABLE projects ADD COLUMN declared text;
ALTER TABLE jobsets ADD COLUMN declared text;
ALTER TABLE api_keys ADD COLUMN declared text;
ALTER TABLE agents ADD COLUMN declared text;
ALTER TABLE users ADD COLUMN declared text;
-- A project whose repository declares its jobsets: the file (e.g. .fc.toml, empty:
-- none), the branch it is read from (empty: the default branch), and the last error
-- reading it (empty: none), shown on the project.
ALTER TABLE projects
    ADD COLUMN declarative_file text NOT NULL DEFAULT '',
    ADD COLUMN declarative_branch text NOT NULL DEFAULT '',
    ADD COLUMN declarative_error text NOT NULL DEFAULT '';
-- Declared API keys are found by name among the declared ones.
CREATE UNIQUE INDEX api_keys_declared_name ON api_keys (name) WHERE declared IS NOT NULL;

-- +goose Down
DROP INDEX api_keys_declared_name;
ALTER TABLE projects DROP COLUMN declarative_file, DROP COLUMN declarative_branch, DROP COLUMN declarative_error;
ALTER TABLE users DROP COLUMN declared;
ALTER TABLE agents DROP COLUMN declared;
ALTER TABLE api_keys DROP COLUMN declared;
ALTER TABLE jobsets DROP COLUMN declared;
ALTER TABLE projects DROP COLUMN declared;

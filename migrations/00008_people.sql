-- +goose Up
-- People own projects too: a user with the create-projects role who creates a project
-- (through the API or the dashboard, signed in with a password) owns it and manages
-- it, as the create-projects API key that created a project does (owner_key_id). A
-- project has at most one owner of either kind; admins manage all.
--
-- Deleting the user keeps the project and leaves it without this owner (ON DELETE SET
-- NULL), for the same reasons as a deleted key: nothing built is lost, and the project
-- does not pass to whoever is created next.
ALTER TABLE projects ADD COLUMN owner_user_id bigint REFERENCES users (id) ON DELETE SET NULL;
-- Deleting a user looks up the projects they own.
CREATE INDEX projects_owner_user_id ON projects (owner_user_id) WHERE owner_user_id IS NOT NULL;
-- Signing out everywhere (a password change, a disabled account) finds a user's sessions.
CREATE INDEX sessions_user_id ON sessions (user_id) WHERE user_id IS NOT NULL;
-- Revoking a key ends the sessions signed in with it (ON DELETE CASCADE), and deleting
-- a jobset forgets its stars: both look rows up by the foreign key.
CREATE INDEX sessions_api_key_id ON sessions (api_key_id) WHERE api_key_id IS NOT NULL;
CREATE INDEX starred_jobs_jobset_id ON starred_jobs (jobset_id);

-- +goose Down
DROP INDEX starred_jobs_jobset_id;
DROP INDEX sessions_api_key_id;
DROP INDEX sessions_user_id;
DROP INDEX projects_owner_user_id;
ALTER TABLE projects DROP COLUMN owner_user_id;

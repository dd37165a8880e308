-- +goose Up
-- Forges (issue 17, first half): where a project's repository is hosted, so FC can
-- list its pull requests (and, later, report commit statuses there).
--
-- One row per project that has a forge; a project without one is unchanged. The
-- token is write-only through the API, like the webhook secret.
CREATE TABLE project_forges (
    project_id               bigint PRIMARY KEY REFERENCES projects (id) ON DELETE CASCADE,
    type                     text NOT NULL CHECK (type IN ('github', 'gitea', 'forgejo', 'gitlab')),
    api_url                  text NOT NULL,
    repository               text NOT NULL,  -- owner/name; GitLab: a group path or a numeric id
    token                    text,           -- write-only
    status_per_job           boolean NOT NULL DEFAULT false,
    pull_requests_from_forks boolean NOT NULL DEFAULT false,
    updated_at               timestamptz NOT NULL DEFAULT now()
);

-- A jobset with pull_requests gets a jobset of its own for each open pull request
-- whose base is its branch: parent_jobset_id and pr_number name it (one per pull
-- request and parent), its branch is the forge's ref for the request's head
-- (refs/pull/N/head, refs/merge-requests/N/head), pr_head_sha the commit evaluated.
-- A closed request's jobset is disabled and hidden (kept for history).
ALTER TABLE jobsets
    ADD COLUMN pull_requests       boolean NOT NULL DEFAULT false,
    ADD COLUMN pull_request_drafts boolean NOT NULL DEFAULT false,
    ADD COLUMN hidden              boolean NOT NULL DEFAULT false,
    ADD COLUMN parent_jobset_id    bigint REFERENCES jobsets (id) ON DELETE CASCADE,
    ADD COLUMN pr_number           bigint,
    ADD COLUMN pr_head_sha         text NOT NULL DEFAULT '',
    ADD COLUMN pr_head_branch      text NOT NULL DEFAULT '',
    ADD COLUMN pr_head_repository  text NOT NULL DEFAULT '',
    ADD COLUMN pr_title            text NOT NULL DEFAULT '',
    ADD CONSTRAINT jobsets_pull_request CHECK ((parent_jobset_id IS NULL) = (pr_number IS NULL));
CREATE UNIQUE INDEX jobsets_parent_pr ON jobsets (parent_jobset_id, pr_number) WHERE parent_jobset_id IS NOT NULL;
-- The pull request pass looks up the jobsets that follow pull requests.
CREATE INDEX jobsets_pull_requests ON jobsets (project_id) WHERE pull_requests;

-- +goose Down
DROP INDEX jobsets_pull_requests;
DROP INDEX jobsets_parent_pr;
ALTER TABLE jobsets
    DROP CONSTRAINT jobsets_pull_request,
    DROP COLUMN pr_title,
    DROP COLUMN pr_head_repository,
    DROP COLUMN pr_head_branch,
    DROP COLUMN pr_head_sha,
    DROP COLUMN pr_number,
    DROP COLUMN parent_jobset_id,
    DROP COLUMN hidden,
    DROP COLUMN pull_request_drafts,
    DROP COLUMN pull_requests;
DROP TABLE project_forges;

-- +goose Up
-- GET /api/v1/builds at 1,000,000 builds (issue 20): each page's ids are read from an
-- index alone (no table row until the page's own), whichever filter drives it.
-- A jobset's builds with one status (the jobset page's "failed" list).
CREATE INDEX builds_jobset_status ON builds (jobset_id, status, id DESC);
-- A status across projects; the jobset in the index keeps a project or jobset filter
-- on top of it index-only too. It replaces builds_status (status, id DESC).
CREATE INDEX builds_status_jobset ON builds (status, id DESC) INCLUDE (jobset_id);
DROP INDEX builds_status;
-- One job's builds across jobsets (?job= without ?jobset_id=).
CREATE INDEX builds_by_job ON builds (job, id DESC);
-- GET /api/v1/builds/recent: the most recently finished first.
CREATE INDEX builds_recent ON builds (finished_at DESC, id DESC) WHERE finished_at IS NOT NULL;

-- +goose Down
CREATE INDEX builds_status ON builds (status, id DESC);
DROP INDEX builds_recent, builds_by_job, builds_status_jobset, builds_jobset_status;

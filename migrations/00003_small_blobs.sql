-- +goose Up
-- Small compressed NARs (most .drv files, many small outputs) live here rather than as
-- files: creating a file costs far more than the row (0.2–0.5 ms against a few µs
-- here), an evaluation uploads thousands of them, and the row commits in the same
-- transaction as the narinfo that points at it ('nar/' || name = narinfos.url).
CREATE TABLE small_blobs (
    name       text PRIMARY KEY,
    data       bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE small_blobs;

-- +goose Up
-- An evaluation's report as the agent streams it (protocol.StreamEvalStream), kept
-- out of sight until the agent says it is complete: then one transaction moves it
-- into steps, builds and the rest (storage.EvalIngest). Unlogged: a crash loses only
-- reports whose streams died with it, and their evaluations are retried anyway.
-- Nothing here refers to shared rows, so streaming locks nothing another evaluation
-- or the build queue needs.
CREATE UNLOGGED TABLE eval_ingests (
    id            bigserial PRIMARY KEY,
    evaluation_id bigint NOT NULL,
    lease_epoch   bigint NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX eval_ingests_evaluation ON eval_ingests (evaluation_id);

CREATE UNLOGGED TABLE eval_ingest_jobs (
    ingest_id           bigint NOT NULL REFERENCES eval_ingests (id) ON DELETE CASCADE,
    attr                text NOT NULL,
    name                text NOT NULL,
    drv_path            text NOT NULL,
    system              text NOT NULL,
    description         text NOT NULL,
    license             text NOT NULL,
    homepage            text NOT NULL,
    scheduling_priority int NOT NULL,
    is_aggregate        boolean NOT NULL,
    output_names        text[] NOT NULL,
    output_paths        text[] NOT NULL,
    constituents        text[] NOT NULL
);
CREATE INDEX eval_ingest_jobs_ingest ON eval_ingest_jobs (ingest_id);

-- seq numbers a report's nodes from 1: the final transaction passes their ranks
-- (priority, critical path, limits) as arrays indexed by it.
CREATE UNLOGGED TABLE eval_ingest_nodes (
    ingest_id          bigint NOT NULL REFERENCES eval_ingests (id) ON DELETE CASCADE,
    seq                int NOT NULL,
    drv_path           text NOT NULL,
    system             text NOT NULL,
    required_features  text[] NOT NULL,
    prefer_local_build boolean NOT NULL,
    output_names       text[] NOT NULL,
    output_paths       text[] NOT NULL,
    output_cas         text[] NOT NULL,
    inputs             text[] NOT NULL
);
CREATE INDEX eval_ingest_nodes_ingest ON eval_ingest_nodes (ingest_id);

CREATE UNLOGGED TABLE eval_ingest_errors (
    ingest_id bigint NOT NULL REFERENCES eval_ingests (id) ON DELETE CASCADE,
    attr      text NOT NULL,
    message   text NOT NULL
);
CREATE INDEX eval_ingest_errors_ingest ON eval_ingest_errors (ingest_id);

-- +goose Down
DROP TABLE eval_ingest_errors;
DROP TABLE eval_ingest_nodes;
DROP TABLE eval_ingest_jobs;
DROP TABLE eval_ingests;

-- +goose Up
-- Delivery (issue 17, second half): commit statuses, e-mails, outgoing webhooks and
-- run_command go through one outbox, delivered at least once.

-- A project's notifications: whom to mail, when, and where to post a webhook. The
-- webhook secret is write-only through the API.
CREATE TABLE project_notifications (
    project_id     bigint PRIMARY KEY REFERENCES projects (id) ON DELETE CASCADE,
    emails         text[] NOT NULL DEFAULT '{}',
    notify_on      text NOT NULL DEFAULT 'failure' CHECK (notify_on IN ('failure', 'change', 'always')),
    webhook_url    text NOT NULL DEFAULT '',
    webhook_secret text,  -- write-only
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- One row per thing to deliver. target says where it goes without any secret (the
-- forge's token, the webhook's secret and the SMTP password are read when sending);
-- payload is what is sent. Rows of one ordering_key (the statuses of one commit and
-- context) are sent in id order, so a forge ends on the newest state. A sender
-- claims a due row for claimed_until (a lease: a sender that died mid-send leaves it
-- to be claimed again once it passes); claim fences the answer of a sender whose
-- lease ran out.
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('status', 'email', 'webhook', 'command')),
    target          text NOT NULL,
    payload         jsonb NOT NULL,
    project_id      bigint REFERENCES projects (id) ON DELETE CASCADE,
    ordering_key    text,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    claim           bigint NOT NULL DEFAULT 0,
    last_error      text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);
-- The senders' claim: due pending rows.
CREATE INDEX outbox_due ON outbox (next_attempt_at, id) WHERE status = 'pending';
-- Order within a key, and the producer's "what did this context say last".
CREATE INDEX outbox_ordering ON outbox (ordering_key, id DESC) WHERE ordering_key IS NOT NULL;
-- The admins' list, filtered by status, newest first.
CREATE INDEX outbox_status ON outbox (status, id DESC);

-- What changed, for the producer to turn into deliveries: an evaluation that
-- started or ended, a build that finished or was queued again. Triggers write them in
-- the transaction that changes the status (one INSERT; the schedulers call nothing),
-- so no change is missed, whichever code path made it.
CREATE TABLE outbox_events (
    id            bigserial PRIMARY KEY,
    evaluation_id bigint NOT NULL,
    build_id      bigint,  -- NULL: the evaluation's own status changed
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- +goose StatementBegin
CREATE FUNCTION outbox_evaluation_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_events (evaluation_id) VALUES (NEW.id);
    PERFORM pg_notify('fc_outbox', '');
    RETURN NULL;
END $$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION outbox_build_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_events (evaluation_id, build_id) VALUES (NEW.evaluation_id, NEW.id);
    PERFORM pg_notify('fc_outbox', '');
    RETURN NULL;
END $$;
-- +goose StatementEnd

CREATE TRIGGER evaluations_outbox AFTER UPDATE OF status ON evaluations FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('running', 'succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION outbox_evaluation_changed();
-- A build that finished, or a finished one queued again (a restart).
CREATE TRIGGER builds_outbox AFTER UPDATE OF status ON builds FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status AND (OLD.finished_at IS NOT NULL OR NEW.finished_at IS NOT NULL))
    EXECUTE FUNCTION outbox_build_changed();

-- +goose Down
DROP TRIGGER builds_outbox ON builds;
DROP TRIGGER evaluations_outbox ON evaluations;
DROP FUNCTION outbox_build_changed();
DROP FUNCTION outbox_evaluation_changed();
DROP TABLE outbox_events;
DROP TABLE outbox;
DROP TABLE project_notifications;

-- +goose Up
-- Agent names follow the rule of every other name (protocol.CheckName: a letter or '_',
-- then letters, digits, '.', '_', '-'; at most 63 characters for an agent) and are
-- unique among agents that are not revoked. Agents enrolled before chose their own
-- names unchecked, so an old database may hold invalid or duplicate names: each such
-- agent is renamed, deterministically, before the index is made.
--   * An invalid name (any agent, revoked or not) becomes its valid characters (runs
--     of others turned into one '-', 'agent' put in front when it would not start
--     with a letter or '_'), shortened, then '-<id>': of agent 7, '<script>' becomes
--     'script-7' and '10.0.0.1' 'agent-10.0.0.1-7'.
--   * Of agents that are not revoked and share a name, the oldest (lowest id) keeps
--     it; each other one becomes '<name>-<id>' (the name shortened to fit).
--   * Should the new name be taken already, '-2', '-3', ... follow it.
-- +goose StatementBegin
DO $$
DECLARE
    a record;
    base text;
    suffix text;
    candidate text;
    n integer;
BEGIN
    FOR a IN
        SELECT x.id, x.name FROM agents x
        WHERE NOT (x.name ~ '^[A-Za-z_][A-Za-z0-9._-]*$' AND length(x.name) <= 63)
           OR (x.revoked_at IS NULL AND EXISTS (
                SELECT 1 FROM agents y WHERE y.name = x.name AND y.revoked_at IS NULL AND y.id < x.id))
        ORDER BY x.id
    LOOP
        base := a.name;
        IF NOT (base ~ '^[A-Za-z_][A-Za-z0-9._-]*$' AND length(base) <= 63) THEN
            base := trim(BOTH '-' FROM regexp_replace(left(base, 200), '[^A-Za-z0-9._-]+', '-', 'g'));
            IF base !~ '^[A-Za-z_]' THEN
                base := rtrim('agent-' || base, '-');
            END IF;
        END IF;
        n := 1;
        LOOP
            suffix := '-' || a.id || CASE WHEN n > 1 THEN '-' || n ELSE '' END;
            candidate := left(base, 63 - length(suffix)) || suffix;
            EXIT WHEN NOT EXISTS (
                SELECT 1 FROM agents WHERE name = candidate AND revoked_at IS NULL AND id <> a.id);
            n := n + 1;
        END LOOP;
        UPDATE agents SET name = candidate WHERE id = a.id;
    END LOOP;
END
$$;
-- +goose StatementEnd

CREATE UNIQUE INDEX agents_name_active ON agents (name) WHERE revoked_at IS NULL;

-- +goose Down
-- Renamed agents keep their new names.
DROP INDEX agents_name_active;

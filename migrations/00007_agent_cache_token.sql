-- +goose Up
-- A private cache (cache.private) is read by the agents that build from it: each
-- daemon session's welcome gives the agent a fresh random cache read token, which it
-- presents to the cache as the password of HTTP basic authentication (a netrc entry).
-- Only the token's SHA-256 is stored; the next welcome replaces it, and revocation
-- clears it (a revoked agent's token is refused either way).
ALTER TABLE agents ADD COLUMN cache_token_hash bytea;
-- Every read of a private cache by an agent looks its token up.
CREATE UNIQUE INDEX agents_cache_token_hash ON agents (cache_token_hash) WHERE cache_token_hash IS NOT NULL;

-- +goose Down
DROP INDEX agents_cache_token_hash;
ALTER TABLE agents DROP COLUMN cache_token_hash;

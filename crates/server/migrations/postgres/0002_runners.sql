-- Several runners behind the API: the runner each sandbox was placed on
-- (`main`: the one runner of a server with one), and each runner the
-- operator drained (no placement there) or whose instance (an id of its
-- process, new at each start) was last restored from the store, so that
-- a replica that sees a runner restarted restores it unless another
-- replica has already.
ALTER TABLE sandboxes ADD COLUMN runner TEXT NOT NULL DEFAULT 'main';
CREATE TABLE runners (
    name TEXT PRIMARY KEY,
    draining BIGINT NOT NULL DEFAULT 0,
    -- A change could not reach it: every sandbox of it is restored from
    -- the store when it answers again (by any replica).
    owed BIGINT NOT NULL DEFAULT 0,
    restored_instance TEXT NOT NULL DEFAULT '',
    -- A runner that registers itself: the SHA-256 of the token the
    -- operator issued it, the URL it is reached at, the token the API
    -- calls it with, and its last heartbeat (ms) with its slots.
    token_hash TEXT NOT NULL DEFAULT '',
    url TEXT NOT NULL DEFAULT '',
    call_token TEXT NOT NULL DEFAULT '',
    heartbeat_ms BIGINT NOT NULL DEFAULT 0,
    slots BIGINT NOT NULL DEFAULT 0,
    used BIGINT NOT NULL DEFAULT 0,
    -- Its labels, a JSON object (the tiers' placement picks by them).
    labels TEXT NOT NULL DEFAULT '{}'
);

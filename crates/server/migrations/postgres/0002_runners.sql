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
    restored_instance TEXT NOT NULL DEFAULT ''
);

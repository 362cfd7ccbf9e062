-- Several runners behind the API: the runner each sandbox was placed on
-- (`main`: the one runner of a server with one), and each runner the
-- operator drained (no placement there). (`restored_instance` is read on
-- PostgreSQL only, where replicas share the store.)
ALTER TABLE sandboxes ADD COLUMN runner TEXT NOT NULL DEFAULT 'main';
CREATE TABLE runners (
    name TEXT PRIMARY KEY,
    draining INTEGER NOT NULL DEFAULT 0,
    restored_instance TEXT NOT NULL DEFAULT ''
);

-- Milestone 2, HTTP rules: a sandbox's httpRules, canonical JSON ('' for
-- none), enforced by the gateway on each request it sees.

ALTER TABLE sandboxes ADD COLUMN http_rules TEXT NOT NULL DEFAULT '';

-- Milestone 2, the sandbox boundary: each sandbox's resources (memory,
-- CPU, disk; 0 on rows from before: the tier's defaults of the time are
-- shown), and scoped API keys ('*' on keys from before: every scope, as
-- they had). A sandbox's state may now also be `died` (its init died) and
-- `lost`.

ALTER TABLE sandboxes ADD COLUMN memory_mib INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN cpu_millicores INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN disk_mib INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT '*';

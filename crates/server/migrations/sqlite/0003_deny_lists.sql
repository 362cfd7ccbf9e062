-- Milestone 2, narrowing: each sandbox's deny lists (canonical text, ''
-- for none) and whether its essential services are on (1 on rows from
-- before: they were).

ALTER TABLE sandboxes ADD COLUMN network_deny_list TEXT NOT NULL DEFAULT '';
ALTER TABLE sandboxes ADD COLUMN domain_deny_list TEXT NOT NULL DEFAULT '';
ALTER TABLE sandboxes ADD COLUMN essential_services INTEGER NOT NULL DEFAULT 1;

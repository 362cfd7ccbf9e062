-- Milestone 2, runtime classes: the OCI runtime each sandbox runs under
-- (`runc` or `runsc`); rows from before ran under runc.

ALTER TABLE sandboxes ADD COLUMN runtime_class TEXT NOT NULL DEFAULT 'runc';

-- The runner's instance (an id of its process, new at each start) whose
-- sandboxes were last restored from the store: a replica that sees the
-- runner restarted restores it unless another replica has already.
ALTER TABLE write_journal ADD COLUMN runner_instance TEXT NOT NULL DEFAULT '';

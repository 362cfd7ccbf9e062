-- Milestone 2, grants: each sandbox's grants in force, a JSON array of
-- {id, target, reason, createdAt, expiresAtMs} ('[]' on rows from before).
-- Kept on the row, so that every resolution of its policy reads them with
-- its settings; ended grants are dropped at the next write.

ALTER TABLE sandboxes ADD COLUMN grants TEXT NOT NULL DEFAULT '[]';

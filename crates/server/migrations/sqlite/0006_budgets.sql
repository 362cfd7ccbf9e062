-- Milestone 2, budgets: the egress bandwidth a sandbox asked for, Mbit/s
-- (NULL: its tier's default, resolved at every read, within the tier's
-- maximum).

ALTER TABLE sandboxes ADD COLUMN egress_mbps INTEGER;

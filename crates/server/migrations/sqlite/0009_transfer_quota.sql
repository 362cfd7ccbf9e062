-- Milestone 2, budgets: the transfer quota a sandbox asked for
-- (transferQuotaMiB, MiB a period; NULL: its tier's default, resolved at
-- every read, never above the tier's maximum).

ALTER TABLE sandboxes ADD COLUMN transfer_quota_mib INTEGER;

-- Milestone 2, budgets: the connection budgets a sandbox asked for
-- (maxConnections, newConnectionsPerSecond; NULL: its tier's fair share,
-- resolved at every read, never above it).

ALTER TABLE sandboxes ADD COLUMN max_connections INTEGER;
ALTER TABLE sandboxes ADD COLUMN new_connections_per_second INTEGER;

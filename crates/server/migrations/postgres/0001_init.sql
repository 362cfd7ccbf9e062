-- sandgate's store on PostgreSQL: the schema the SQLite migrations build
-- one step at a time (migrations/sqlite), in one step, with 64-bit
-- integers; the statements of src/store.rs run on both as written. A
-- change of schema is a migration in each directory.

CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    tier BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    -- JSON {"ipv4"?, "ipv6"?}; NULL leaves from the host's own address.
    egress_address TEXT
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT,
    scopes TEXT NOT NULL DEFAULT '*'
);

-- state: creating | running | deleting | died | lost. A row in `creating`
-- or `deleting` seen by the holder of the write lock belongs to a change
-- cut short (see write_journal): its sandbox is removed.
CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    state TEXT NOT NULL,
    network_block_all BIGINT NOT NULL,
    network_allow_list TEXT NOT NULL,
    domain_allow_list TEXT NOT NULL,
    env TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    memory_mib BIGINT NOT NULL DEFAULT 0,
    cpu_millicores BIGINT NOT NULL DEFAULT 0,
    disk_mib BIGINT NOT NULL DEFAULT 0,
    network_deny_list TEXT NOT NULL DEFAULT '',
    domain_deny_list TEXT NOT NULL DEFAULT '',
    essential_services BIGINT NOT NULL DEFAULT 1,
    grants TEXT NOT NULL DEFAULT '[]',
    egress_mbps BIGINT,
    max_connections BIGINT,
    new_connections_per_second BIGINT,
    network_approvals BIGINT NOT NULL DEFAULT 0,
    approval_hold_seconds BIGINT NOT NULL DEFAULT 0,
    declined_names TEXT NOT NULL DEFAULT '[]',
    transfer_quota_mib BIGINT,
    UNIQUE (organization_id, name)
);

CREATE TABLE access_requests (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    protocol TEXT,
    port BIGINT,
    attempts BIGINT NOT NULL,
    state TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    decided_at_ms BIGINT,
    grant_id TEXT,
    UNIQUE (sandbox_id, target)
);

-- The writes of all API replicas are serialized by one advisory lock,
-- held for a whole change (the store and the runner's part). Its holder
-- sets `open` when it takes it and clears it when its change is done; a
-- holder that finds it set knows the last one died amid a change, and
-- first restores every sandbox from the rows (see src/writes.rs). Each
-- taking adds one to `generation`, which the holder's changes carry to
-- the runner: a runner refuses a change of an older generation than one
-- it took, so a replica that lost the lock amid a change cannot land it.
CREATE TABLE write_journal (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    open BIGINT NOT NULL,
    holder TEXT NOT NULL,
    since TEXT NOT NULL,
    generation BIGINT NOT NULL
);
INSERT INTO write_journal (id, open, holder, since, generation) VALUES (1, 0, '', '', 0);

-- sandgate's store. Portable SQL: TEXT and INTEGER columns, timestamps as
-- RFC 3339 text, no engine-specific functions, so that the same statements
-- run on SQLite (the default) and PostgreSQL.

CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    tier INTEGER NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);

-- state: creating | running | deleting. A row in `creating` or `deleting`
-- found at start belongs to a request cut short: its sandbox is removed.
CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    state TEXT NOT NULL,
    network_block_all INTEGER NOT NULL,
    network_allow_list TEXT NOT NULL,
    domain_allow_list TEXT NOT NULL,
    env TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (organization_id, name)
);

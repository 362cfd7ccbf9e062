-- Milestone 2, secrets: an organization's secrets, sealed with the
-- operator's key (never stored in the clear), and the secrets each sandbox
-- holds (a JSON array of {name, placeholder}; '' for none).

CREATE TABLE secrets (
    organization_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    hosts TEXT NOT NULL,
    sealed TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (organization_id, name)
);

ALTER TABLE sandboxes ADD COLUMN secrets TEXT NOT NULL DEFAULT '';

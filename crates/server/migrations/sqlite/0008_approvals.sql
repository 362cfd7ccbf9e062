-- Milestone 2, approvals: whether what a sandbox is refused opens access
-- requests (networkApprovals) and how long a refused DNS query waits for
-- an answer (approvalHoldSeconds, 0 to 60), and the requests themselves:
-- one per sandbox and target (a name, or an address), with its attempts,
-- decided once (approved: by a grant, grant_id set, or a permanent list
-- entry; denied). They go with their sandbox. The names whose request was
-- denied are kept on the sandbox's row too (a JSON array), as its grants
-- are: its policy carries them, so that its DNS service refuses them at
-- once instead of holding them.

ALTER TABLE sandboxes ADD COLUMN network_approvals INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN approval_hold_seconds INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN declined_names TEXT NOT NULL DEFAULT '[]';

CREATE TABLE access_requests (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    protocol TEXT,
    port INTEGER,
    attempts INTEGER NOT NULL,
    state TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    decided_at_ms INTEGER,
    grant_id TEXT,
    UNIQUE (sandbox_id, target)
);

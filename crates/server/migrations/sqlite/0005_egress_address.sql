-- Milestone 2, a known egress address per organization: the addresses
-- its sandboxes' connections leave from, as JSON {"ipv4"?, "ipv6"?}, set
-- by the operator; NULL leaves from the host's own address.

ALTER TABLE organizations ADD COLUMN egress_address TEXT;

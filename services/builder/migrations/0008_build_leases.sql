-- Builds are driven under a lease so that several builder replicas share the queue and never
-- drive one build twice: the owner (a replica id), an epoch bumped by every claim, and an
-- expiry the owner renews while it builds. Every write by the owner is compare-and-set on
-- owner and epoch; a replica whose lease was taken over stops without publishing.
ALTER TABLE builds ADD COLUMN lease_owner TEXT;
ALTER TABLE builds ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE builds ADD COLUMN lease_expires_at TIMESTAMPTZ;
CREATE INDEX builds_leases ON builds (lease_expires_at) WHERE status = 'running';

-- Every claim, kept so that anyone (the chaos suite) can check that claim k+1 started only
-- after claim k was released or its lease ran out.
CREATE TABLE build_claims (
    build_id    UUID NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    epoch       BIGINT NOT NULL,
    owner       TEXT NOT NULL,
    claimed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    renewed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    released_at TIMESTAMPTZ,
    PRIMARY KEY (build_id, epoch)
);

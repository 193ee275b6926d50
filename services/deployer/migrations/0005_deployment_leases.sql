-- Deployments are driven under a lease, so that of several deployer replicas exactly one drives
-- each deployment. A replica claims a runnable deployment whose lease is free or expired
-- (incrementing the epoch), renews it while driving, and every write it makes as the driver is
-- compare-and-set on (lease_owner, lease_epoch): a replica whose lease was taken over writes
-- nothing more. The state lives in the row, so the new owner resumes at the stored step.
ALTER TABLE deployments
    ADD COLUMN lease_owner      TEXT,
    ADD COLUMN lease_epoch      BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN lease_expires_at TIMESTAMPTZ;

-- Every claim ever made: who drove which deployment in which epoch, renewed until when, and when
-- it let go. Claim k+1 of a deployment starts only after claim k was released or expired
-- (renewed_at + the lease's time to live), which is what the chaos suite checks.
CREATE TABLE deployment_claims (
    deployment_id UUID NOT NULL,
    epoch         BIGINT NOT NULL,
    owner         TEXT NOT NULL,
    claimed_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    renewed_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    released_at   TIMESTAMPTZ,
    PRIMARY KEY (deployment_id, epoch)
);

-- Every replica looks for claimable deployments about once a second: only the unfinished ones.
CREATE INDEX deployments_unfinished ON deployments (created_at)
    WHERE status IN ('queued', 'progressing', 'rolling_back');

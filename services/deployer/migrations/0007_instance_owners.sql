-- Several deployer replicas: each instance is supervised by one of them, its owner (a
-- `ReplicaId`), and is told from any other process by what it cannot rewrite.
--
-- `owner_epoch` grows with every change of owner (compare-and-set: two replicas never adopt
-- the same instance); `node` is where it runs (host name and work directory of the process
-- target), since only a replica there can see its process. pid, process group, start time
-- (field 22 of /proc/<pid>/stat) and boot id name its current process; rows from before have
-- none of them and no owner, so the first replica on their node adopts them.
ALTER TABLE instances
    ADD COLUMN owner       TEXT,
    ADD COLUMN owner_epoch BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN node        TEXT,
    ADD COLUMN pgid        INTEGER,
    ADD COLUMN start_time  BIGINT,
    ADD COLUMN boot_id     TEXT;
CREATE INDEX instances_owner ON instances (owner);

-- Liveness of each deployer replica, renewed every few seconds. A replica whose row is missing
-- or older than the liveness timeout is gone: a live replica adopts its instances. Its process
-- (pid, start time, boot, pid namespace) lets a replica on the same node see at once that it
-- died (SIGKILL, then a restart as a new replica), without waiting for the timeout.
CREATE TABLE deployer_replicas (
    replica      TEXT PRIMARY KEY,
    node         TEXT NOT NULL,
    pid          INTEGER,
    start_time   BIGINT,
    boot_id      TEXT,
    pid_ns       TEXT,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Who supervised each instance when (the chaos suite reads it to prove that no two replicas
-- supervised one instance at once): claim k+1 starts after claim k was released or after its
-- renewed_at + the liveness timeout. renewed_at is the owner's last liveness renewal
-- (deployer_replicas.heartbeat_at) while it held the claim: the owner acts only under a lease
-- that ends before that + the timeout.
CREATE TABLE instance_claims (
    instance_id UUID NOT NULL,
    epoch       BIGINT NOT NULL,
    owner       TEXT NOT NULL,
    claimed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    renewed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    released_at TIMESTAMPTZ,
    PRIMARY KEY (instance_id, epoch)
);
CREATE INDEX instance_claims_open ON instance_claims (owner) WHERE released_at IS NULL;

-- Discovery heals itself (heartbeats v2) and versions the routing table per router.

-- Who supervises each instance (a deployer ReplicaId, from its heartbeats), and when a heartbeat
-- last listed it, in the sender's clock: an instance is reaped only when heartbeats for its
-- environment go on without listing it, never because heartbeats stop arriving altogether.
ALTER TABLE instances ADD COLUMN owner TEXT;
ALTER TABLE instances ADD COLUMN listed_at TIMESTAMPTZ;

-- Instances stopped on purpose, for an hour: a heartbeat composed just before a stop but applied
-- after it must not bring the instance back.
CREATE TABLE stopped_instances (
    id          UUID PRIMARY KEY,
    stopped_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX stopped_instances_at ON stopped_instances (stopped_at);

-- The table version (discovery index) at which each split took effect. A split set to no
-- weights is kept, with empty weights, so its version stays known; discovery leaves it out.
ALTER TABLE traffic ADD COLUMN version BIGINT NOT NULL DEFAULT 0;

-- Edge routers and the table version each serves, reported by every discovery poll. A router
-- is live until its poll's wait plus a grace has passed without another poll.
CREATE TABLE routers (
    id          TEXT PRIMARY KEY,
    applied     BIGINT NOT NULL,
    polled_at   TIMESTAMPTZ NOT NULL,
    live_until  TIMESTAMPTZ NOT NULL
);

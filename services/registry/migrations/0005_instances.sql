-- Discovered instances, fed by the deployer's instance facts and the monitor's verdicts.
-- No foreign key to `services`: the registry records what runs even if it learns of it first.
CREATE TABLE instances (
    id              UUID PRIMARY KEY,
    service_id      UUID NOT NULL,
    service_name    TEXT NOT NULL,
    environment     TEXT NOT NULL,
    release         INTEGER NOT NULL,
    address         TEXT NOT NULL,
    target          TEXT NOT NULL,
    -- The incarnation: a restart after a crash starts the same id with a higher count.
    restarts        BIGINT NOT NULL,
    health          TEXT NOT NULL CHECK (health IN ('starting', 'healthy', 'unhealthy')),
    state           TEXT NOT NULL CHECK (state IN ('running', 'draining', 'down')),
    -- The monitor's check (e.g. `http GET /healthz`) and what it or the exit last said.
    health_check    TEXT,
    detail          TEXT,
    started_at      TIMESTAMPTZ NOT NULL,
    last_seen       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The interval the last heartbeat announced; NULL until one lists the instance.
    heartbeat_ms    BIGINT
);
CREATE INDEX instances_service ON instances (service_id, environment);
CREATE INDEX instances_last_seen ON instances (last_seen);

-- The traffic split per service and environment, replaced by each `traffic.changed`.
CREATE TABLE traffic (
    service_id    UUID NOT NULL,
    service_name  TEXT NOT NULL,
    environment   TEXT NOT NULL,
    weights       JSONB NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (service_id, environment)
);

-- One monotonically increasing index over everything above: bumped in the transaction of
-- every change (and `NOTIFY slipway_discovery`), so blocking queries know what they saw.
CREATE TABLE discovery_index (
    singleton  BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    value      BIGINT NOT NULL
);
INSERT INTO discovery_index (value) VALUES (0);

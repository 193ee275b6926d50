-- The instances the monitor probes: one row per instance, holding its latest incarnation
-- (`restarts`). Loaded at start-up so a restarted monitor resumes probing every instance with
-- `probing`. Written when an instance starts, exits or is stopped, and on health transitions
-- only (runs of probe outcomes live in memory).
CREATE TABLE probes (
    instance_id   UUID PRIMARY KEY,
    service_id    UUID NOT NULL,
    service_name  TEXT NOT NULL,
    environment   TEXT NOT NULL,
    release       INTEGER NOT NULL,
    address       TEXT NOT NULL,
    health_check  JSONB NOT NULL,
    restarts      BIGINT NOT NULL,
    -- false once this incarnation exited: nothing to probe until the next start.
    probing       BOOLEAN NOT NULL DEFAULT true,
    health        TEXT NOT NULL CHECK (health IN ('starting', 'healthy', 'unhealthy')),
    -- The runs of outcomes when the health last changed.
    successes     BIGINT NOT NULL DEFAULT 0,
    failures      BIGINT NOT NULL DEFAULT 0,
    detail        TEXT NOT NULL DEFAULT '',
    -- When the incarnation started (the grace period runs from here).
    started_at    TIMESTAMPTZ NOT NULL,
    -- When `health` took its current value.
    since         TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Trace context of the start, so health verdicts join the deployment's trace.
    traceparent   TEXT,
    tracestate    TEXT
);
CREATE INDEX probes_by_service ON probes (service_name, environment);

-- What instances wrote, one row per line; (instance_id, seq) makes redelivered batches
-- harmless. Pruned past the retention setting.
CREATE TABLE instance_logs (
    instance_id   UUID NOT NULL,
    seq           BIGINT NOT NULL,
    stream        TEXT NOT NULL,
    line          TEXT NOT NULL,
    at            TIMESTAMPTZ NOT NULL,
    service_id    UUID NOT NULL,
    service_name  TEXT NOT NULL,
    environment   TEXT NOT NULL,
    release       INTEGER NOT NULL,
    PRIMARY KEY (instance_id, seq)
);
CREATE INDEX instance_logs_by_environment ON instance_logs (service_name, environment, at);
CREATE INDEX instance_logs_by_age ON instance_logs (at);

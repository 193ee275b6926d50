-- Builds: one run of fetch → test gate → build for one commit of one service.
CREATE TABLE builds (
    id               UUID PRIMARY KEY,
    service_id       UUID NOT NULL,
    service_name     TEXT NOT NULL,
    repository       TEXT,
    git_ref          TEXT NOT NULL,
    commit_requested TEXT,
    commit_built     TEXT,
    trigger_kind     TEXT NOT NULL,
    trigger_actor    TEXT,
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    step             TEXT,
    exit_code        INTEGER,
    reason           TEXT,
    cancel_requested BOOLEAN NOT NULL DEFAULT false,
    queued_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ
);
CREATE INDEX builds_service ON builds (service_name, queued_at DESC);
CREATE INDEX builds_queue ON builds (queued_at) WHERE status = 'queued';

-- Every output line of every step, in order.
CREATE TABLE build_logs (
    build_id  UUID NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    seq       BIGINT NOT NULL,
    step      TEXT NOT NULL,
    stream    TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr', 'slipway')),
    line      TEXT NOT NULL,
    at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (build_id, seq)
);

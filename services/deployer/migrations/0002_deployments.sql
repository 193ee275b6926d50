-- Deployments: one row per deploy, rollback or scale request, driven step by step by the engine.
-- The plan and the position in it live here, so a deployer restarted mid-rollout resumes it.
CREATE TABLE deployments (
    id                   UUID PRIMARY KEY,
    kind                 TEXT NOT NULL CHECK (kind IN ('deploy', 'rollback', 'scale')),
    service_id           UUID NOT NULL,
    service_name         TEXT NOT NULL,
    environment          TEXT NOT NULL,
    -- Asked for: the release (absent for scale, optional for rollback), replicas, config.
    requested_release    INTEGER,
    requested_replicas   INTEGER,
    requested_config     INTEGER,
    strategy             JSONB NOT NULL,
    health_check         JSONB,
    step_timeout_seconds INTEGER NOT NULL,
    auto_rollback        BOOLEAN NOT NULL,
    actor                TEXT,
    -- Resolved when the deployment starts.
    release              INTEGER,
    config_version       INTEGER,
    replicas             INTEGER,
    from_release         INTEGER,
    from_config          INTEGER,
    from_replicas        INTEGER,
    status               TEXT NOT NULL CHECK (status IN ('queued', 'progressing', 'rolling_back',
                             'succeeded', 'failed', 'rolled_back', 'cancelled')),
    -- The steps (JSON array) and where the engine is; `rolling_back` runs `rollback_plan`.
    plan                 JSONB NOT NULL DEFAULT '[]',
    rollback_plan        JSONB NOT NULL DEFAULT '[]',
    step_index           INTEGER NOT NULL DEFAULT 0,
    step_started_at      TIMESTAMPTZ,
    step_deadline        TIMESTAMPTZ,
    cancel_requested     BOOLEAN NOT NULL DEFAULT false,
    -- Why it failed: step, check, message.
    reason               JSONB,
    requested_at         TIMESTAMPTZ NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at           TIMESTAMPTZ,
    finished_at          TIMESTAMPTZ
);
CREATE INDEX deployments_env ON deployments (service_id, environment, created_at DESC);
-- One deployment at a time per service and environment; later ones wait as `queued`.
CREATE UNIQUE INDEX deployments_one_active ON deployments (service_id, environment)
    WHERE status IN ('progressing', 'rolling_back');

-- Desired state per service and environment: what should run.
CREATE TABLE environment_state (
    service_id      UUID NOT NULL,
    environment     TEXT NOT NULL,
    service_name    TEXT NOT NULL,
    release         INTEGER,
    config_version  INTEGER,
    replicas        INTEGER NOT NULL DEFAULT 0,
    health_check    JSONB,
    weights         JSONB NOT NULL DEFAULT '[]',
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (service_id, environment)
);

-- Every release that reached `succeeded` in an environment, with the config it ran with, so a
-- rollback restores code and config together.
CREATE TABLE release_history (
    service_id      UUID NOT NULL,
    environment     TEXT NOT NULL,
    release         INTEGER NOT NULL,
    config_version  INTEGER NOT NULL,
    deployment_id   UUID NOT NULL,
    deployed_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX release_history_env ON release_history (service_id, environment, deployed_at DESC);

-- Instances this deployer runs (the runtime bookkeeping recovery starts from).
CREATE TABLE instances (
    id              UUID PRIMARY KEY,
    service_id      UUID NOT NULL,
    service_name    TEXT NOT NULL,
    environment     TEXT NOT NULL,
    release         INTEGER NOT NULL,
    config_version  INTEGER NOT NULL,
    image           TEXT NOT NULL,
    run             JSONB,
    health_check    JSONB NOT NULL,
    target          TEXT NOT NULL,
    deployment_id   UUID,
    address         TEXT,
    port            INTEGER,
    pid             INTEGER,
    -- starting (row written before the process exists), running, down (crashed, restarting),
    -- draining, stopping.
    state           TEXT NOT NULL,
    health          TEXT NOT NULL DEFAULT 'starting',
    health_detail   TEXT,
    restarts        INTEGER NOT NULL DEFAULT 0,
    crash_loop      BOOLEAN NOT NULL DEFAULT false,
    last_exit       TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX instances_env ON instances (service_id, environment, release);

-- Auto-deploy policy: a new release deploys itself to environments that ask for it.
CREATE TABLE policies (
    service_id      UUID NOT NULL,
    environment     TEXT NOT NULL,
    service_name    TEXT NOT NULL,
    auto_deploy     BOOLEAN NOT NULL,
    strategy        JSONB NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (service_id, environment)
);

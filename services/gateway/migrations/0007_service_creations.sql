-- Service creations the gateway started: recorded, with the sealed webhook secret, before the
-- registry is asked, so that a create whose answer was lost (registry timeout, gateway
-- restart, client timeout) is completed by a retry instead of leaving a service whose secret
-- nobody knows. `answer` is the registry's service once the creation is known to be done;
-- NULL while it is in flight. Rows are forgotten after `retention.creations_hours`.
CREATE TABLE service_creations (
    service_id       UUID PRIMARY KEY,
    -- The token that asked: only it can retry or replay (the answer holds the secret).
    token_id         UUID NOT NULL,
    -- The client's `Idempotency-Key`, when it sent one.
    idempotency_key  TEXT,
    project          TEXT NOT NULL,
    name             TEXT NOT NULL,
    -- SHA-256 of the request's fields (not of the secret, which stays sealed only).
    request_sha256   TEXT NOT NULL,
    secret_generated BOOLEAN NOT NULL,
    answer           JSONB,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at     TIMESTAMPTZ
);
CREATE UNIQUE INDEX service_creations_key ON service_creations (token_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX service_creations_pending ON service_creations (token_id, name)
    WHERE completed_at IS NULL;
CREATE INDEX service_creations_created ON service_creations (created_at);

-- When the webhook secret was last replaced through the rotation endpoint.
ALTER TABLE webhook_secrets ADD COLUMN rotated_at TIMESTAMPTZ;

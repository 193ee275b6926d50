-- Webhook deliveries already handled, so a replayed delivery produces nothing. Keyed by the
-- code host's delivery id and, because that header is not covered by GitHub's signature (a
-- replayer can change it), also by the SHA-256 of the body, which is. Rows older than
-- `webhooks.delivery_retention_days` are pruned; GitHub pushes older than that are refused by
-- their signed `pushed_at`, so pruning does not reopen the replay.
CREATE TABLE webhook_deliveries (
    provider     TEXT NOT NULL CHECK (provider IN ('github', 'gitlab')),
    delivery_id  TEXT NOT NULL,
    body_sha256  TEXT NOT NULL,
    -- The answer given to the first delivery (builds requested, or why none); NULL only
    -- inside the transaction that handles it.
    outcome      JSONB,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, delivery_id),
    UNIQUE (provider, body_sha256)
);
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);

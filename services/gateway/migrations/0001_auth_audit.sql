-- API tokens. Only a SHA-256 of each token is kept: tokens are 256-bit random values, so a
-- fast hash is enough (no dictionary to attack) and lookups stay an index probe.
CREATE TABLE api_tokens (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'deployer', 'viewer')),
    token_hash  TEXT NOT NULL UNIQUE,
    created_by  UUID REFERENCES api_tokens (id),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);

-- Per-service secrets that sign git webhooks (HMAC needs the secret itself, not a hash).
CREATE TABLE webhook_secrets (
    service_id  UUID PRIMARY KEY,
    secret      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every mutating call, whatever its outcome.
CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    token_id    UUID,
    token_name  TEXT,
    role        TEXT,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    status      INTEGER NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at DESC);

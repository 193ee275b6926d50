-- Per-service clone credentials (an HTTPS token or an SSH deploy key), sealed with the
-- builder's secrets key (AES-256-GCM, see libs/secrets): a copy of the database alone reveals
-- nothing. No API reads them back.
CREATE TABLE clone_credentials (
    service_id  UUID PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('token', 'ssh_key')),
    sealed      TEXT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

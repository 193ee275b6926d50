-- Environments of a service (dev, staging, prod, ...) and the target kind they deploy to.
CREATE TABLE environments (
    service_id  UUID NOT NULL REFERENCES services (id),
    name        TEXT NOT NULL,
    target      TEXT NOT NULL CHECK (target IN ('process', 'docker', 'kubernetes')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (service_id, name)
);

-- Config versions: every change makes a new version; old ones stay (releases point at them).
-- `secrets` maps each name to base64(nonce || AES-256-GCM ciphertext); plaintext never lands.
CREATE TABLE config_versions (
    service_id   UUID NOT NULL,
    environment  TEXT NOT NULL,
    version      INTEGER NOT NULL,
    vars         JSONB NOT NULL,
    secrets      JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (service_id, environment, version),
    FOREIGN KEY (service_id, environment) REFERENCES environments (service_id, name)
);

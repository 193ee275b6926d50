-- Services known to slipway. The id is also the Kafka key of every event about the service.
CREATE TABLE services (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    repository  TEXT,
    branch      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

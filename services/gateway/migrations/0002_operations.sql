-- Long-running requests the gateway accepted (202) and turned into command events. The owning
-- service (the builder for builds) reports their progress; this row proves the request exists
-- from the moment it was accepted.
CREATE TABLE operations (
    id            UUID PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('build')),
    service_id    UUID NOT NULL,
    service_name  TEXT NOT NULL,
    requested_by  TEXT,
    trigger       TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX operations_service ON operations (service_id, created_at DESC);

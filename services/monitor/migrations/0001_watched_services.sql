-- Services the monitor watches: its own copy of the registry's facts, kept from "service
-- created" events; health checks and alert rules will hang off this table.
CREATE TABLE watched_services (
    service_id  UUID PRIMARY KEY,
    name        TEXT NOT NULL,
    repository  TEXT,
    branch      TEXT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

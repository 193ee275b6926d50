-- Services the deployer may be asked to deploy: its own copy of the registry's facts, kept
-- from "service created" events; desired state per environment will hang off this table.
CREATE TABLE deploy_targets (
    service_id  UUID PRIMARY KEY,
    name        TEXT NOT NULL,
    repository  TEXT,
    branch      TEXT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

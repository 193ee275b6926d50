-- Where each service's code comes from: the builder's own copy of the registry's facts,
-- kept from "service created" events so a build never has to ask the registry.
CREATE TABLE build_sources (
    service_id  UUID PRIMARY KEY,
    name        TEXT NOT NULL,
    repository  TEXT,
    branch      TEXT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

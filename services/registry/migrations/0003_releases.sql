-- Releases: immutable, numbered per service. A release pairs an artifact (by digest) with the
-- config version in force in each environment when it was made, so deploying or rolling back
-- to it restores code and config together.
CREATE TABLE releases (
    id            UUID PRIMARY KEY,
    service_id    UUID NOT NULL REFERENCES services (id),
    number        INTEGER NOT NULL,
    build_id      UUID NOT NULL UNIQUE,
    artifact_purl TEXT NOT NULL,
    image         TEXT NOT NULL,
    digest        TEXT NOT NULL,
    commit        TEXT NOT NULL,
    run           JSONB,
    config        JSONB NOT NULL DEFAULT '{}',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (service_id, number)
);

-- Immutability is a property of the data, not of the API: no UPDATE or DELETE gets through.
CREATE FUNCTION releases_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'releases are immutable (release % of service %)', OLD.number, OLD.service_id;
END;
$$;
CREATE TRIGGER releases_immutable BEFORE UPDATE OR DELETE ON releases
    FOR EACH ROW EXECUTE FUNCTION releases_are_immutable();

-- Uploaded sources (a .tar.gz of a folder), kept in the database so any builder can build them.
CREATE TABLE source_uploads (
    id            UUID PRIMARY KEY,
    service_name  TEXT NOT NULL,
    archive       BYTEA NOT NULL,
    sha256        TEXT NOT NULL,
    files         INTEGER NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE builds ADD COLUMN upload_id UUID REFERENCES source_uploads (id);

-- The OS user each service's instances run as on the process target when the deployer runs as
-- root (like systemd's DynamicUser): allocated once from `[process] uid_range`, kept for the
-- service's lifetime so its unpacked releases and private directories stay its own. gid = uid.
-- The unique uid is what makes concurrent allocations safe: a loser retries with the next one.
CREATE TABLE service_uids (
    service_id    UUID PRIMARY KEY,
    uid           INTEGER NOT NULL UNIQUE CHECK (uid > 0),
    allocated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The OS user each service's instances run as on the process target when the deployer runs as
-- root (like systemd's DynamicUser): allocated once from `[process] uid_range`, kept for the
-- service's lifetime so its unpacked releases and private directories stay its own. gid = uid.
-- The unique uid is what makes concurrent allocations safe: a loser retries with the next one.
CREATE TABLE service_uids (
    service_id    UUID PRIMARY KEY,
    uid           INTEGER NOT NULL UNIQUE CHECK (uid > 0),
    allocated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Probe paths and run specs became types that only hold valid values (libs/events `inputs`).
-- Rows written before, which would no longer parse, are brought in line so that reading them
-- never fails: a health path that is not a plain path on the instance (`@host/...`, `//host`,
-- whitespace, ...) becomes the default `/healthz`; a run spec without a command is dropped (the
-- image's own command runs, as it did).
CREATE FUNCTION probe_path_ok(path JSONB) RETURNS BOOLEAN LANGUAGE SQL IMMUTABLE AS $$
    SELECT path IS NULL OR (jsonb_typeof(path) = 'string'
        AND length(path #>> '{}') <= 1024
        -- `/`, then printable ASCII; not `//`, no `@`, `#` or `\`.
        AND (path #>> '{}') ~ '^/([!-.0-~][!-~]*)?$'
        AND (path #>> '{}') !~ '[@#\\]')
$$;

UPDATE deployments SET health_check = jsonb_set(health_check, '{path}', '"/healthz"')
    WHERE health_check IS NOT NULL AND NOT probe_path_ok(health_check -> 'path');
UPDATE environment_state SET health_check = jsonb_set(health_check, '{path}', '"/healthz"')
    WHERE health_check IS NOT NULL AND NOT probe_path_ok(health_check -> 'path');
UPDATE instances SET health_check = jsonb_set(health_check, '{path}', '"/healthz"')
    WHERE NOT probe_path_ok(health_check -> 'path');
UPDATE instances SET run = NULL
    WHERE run IS NOT NULL AND (jsonb_typeof(run -> 'command') IS DISTINCT FROM 'array'
        OR jsonb_array_length(run -> 'command') = 0 OR (run -> 'command' ->> 0) = '');
UPDATE instances SET run = jsonb_set(run, '{health_path}', '"/healthz"')
    WHERE run IS NOT NULL AND NOT probe_path_ok(run -> 'health_path');

-- A helper of this migration only (in the service's own schema: its role may not create
-- temporary objects).
DROP FUNCTION probe_path_ok(JSONB);

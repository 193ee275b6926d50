-- Health check paths became a type that only holds a plain path on the instance (libs/events
-- `ProbePath`). A probe stored before with a path that would no longer parse (`@host/...`,
-- `//host`, whitespace, ...) is probed at the default `/healthz` instead, so that loading the
-- probes at start-up never fails and no probe leaves the instance.
UPDATE probes SET health_check = jsonb_set(health_check, '{path}', '"/healthz"')
    WHERE health_check ? 'path' AND NOT (
        jsonb_typeof(health_check -> 'path') = 'string'
        AND length(health_check ->> 'path') <= 1024
        -- `/`, then printable ASCII; not `//`, no `@`, `#` or `\`.
        AND (health_check ->> 'path') ~ '^/([!-.0-~][!-~]*)?$'
        AND (health_check ->> 'path') !~ '[@#\\]');

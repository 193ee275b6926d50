-- The normalised repository (host and path, lowercase, no scheme, user or `.git`) that webhook
-- deliveries are matched by; see `Repository::key`. Rows from before this column are keyed by
-- the same rules in SQL.
ALTER TABLE services ADD COLUMN repository_key TEXT;
UPDATE services SET repository_key = lower(
    regexp_replace(
        regexp_replace(
            regexp_replace(repository, '^[a-z+]+://([^@/]*@)?', ''),
            '^[^@/]*@([^:]+):', '\1/'),
        '(\.git)?/*$', ''))
WHERE repository IS NOT NULL;
CREATE INDEX services_repository_key ON services (repository_key);

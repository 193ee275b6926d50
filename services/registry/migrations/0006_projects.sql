-- Every service belongs to a project (the gateway owns projects and checks callers' roles in
-- them; the registry keeps each service's and announces it in "service created"). Services
-- from before projects existed are in `default`, which the gateway's own migration creates.
ALTER TABLE services ADD COLUMN project TEXT NOT NULL DEFAULT 'default';
ALTER TABLE services ALTER COLUMN project DROP DEFAULT;
CREATE INDEX services_project ON services (project, name);

-- The project each service belongs to, from "service created" events (libs/runtime's
-- catalog): events name it, so this copy keeps it too. Services announced before projects
-- existed are in `default`.
ALTER TABLE watched_services ADD COLUMN project TEXT NOT NULL DEFAULT 'default';

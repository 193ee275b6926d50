-- Projects: the unit of tenancy. Every service belongs to one (the registry keeps which, the
-- gateway checks it); a token holds one role per project (a grant), or is a platform admin,
-- which may act in every project and manage projects and tokens.
CREATE TABLE projects (
    name        TEXT PRIMARY KEY,
    created_by  UUID REFERENCES api_tokens (id),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE grants (
    token_id    UUID NOT NULL REFERENCES api_tokens (id),
    project     TEXT NOT NULL REFERENCES projects (name),
    role        TEXT NOT NULL CHECK (role IN ('admin', 'deployer', 'viewer')),
    granted_by  UUID REFERENCES api_tokens (id),
    granted_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (token_id, project)
);
CREATE INDEX grants_project ON grants (project);

ALTER TABLE api_tokens ADD COLUMN platform_admin BOOLEAN NOT NULL DEFAULT false;

-- Existing data: one `default` project (the registry puts every existing service in it); each
-- token keeps its role there; admins, the bootstrap token among them, could do everything, so
-- they become platform admins.
INSERT INTO projects (name) VALUES ('default');
INSERT INTO grants (token_id, project, role) SELECT id, 'default', role FROM api_tokens;
UPDATE api_tokens SET platform_admin = true WHERE role = 'admin';
ALTER TABLE api_tokens DROP COLUMN role;

-- The project a call touched, when it touched one (`role` is now the role it acted with).
ALTER TABLE audit_log ADD COLUMN project TEXT;
CREATE INDEX audit_log_project ON audit_log (project, id DESC) WHERE project IS NOT NULL;

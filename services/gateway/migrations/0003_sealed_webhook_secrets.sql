-- Webhook secrets are sealed at rest (AES-256-GCM, key from settings) like config secrets.
-- Rows stored in plain text before this migration are sealed by the gateway at start-up
-- (SQL has no key), then `secret` is cleared.
ALTER TABLE webhook_secrets ADD COLUMN sealed TEXT;
ALTER TABLE webhook_secrets ALTER COLUMN secret DROP NOT NULL;

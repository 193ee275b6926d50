-- Retention: uploads and build log lines older than `[retention]` allows are pruned in
-- batches. A build keeps the id of the upload it built (history), not a reference the pruning
-- would have to respect; a queued build whose upload is gone fails at fetch, saying so.
ALTER TABLE builds DROP CONSTRAINT IF EXISTS builds_upload_id_fkey;
CREATE INDEX build_logs_at ON build_logs (at);
CREATE INDEX source_uploads_created ON source_uploads (created_at);
CREATE INDEX builds_upload ON builds (upload_id) WHERE upload_id IS NOT NULL;

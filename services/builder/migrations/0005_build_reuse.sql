-- A request to build a commit that is already queued, running or built reuses that build
-- instead of building (and releasing) the same commit again: a replayed webhook must not make
-- a new release. `reuse_commit` is the commit a build can be reused for (requests naming a
-- commit, not uploads); the unique index makes two concurrent requests share one build. A
-- failed or cancelled build leaves the index, so the commit can be built again.
ALTER TABLE builds ADD COLUMN reuse_commit TEXT;
-- Builds stored before this rule may repeat a commit: the newest of each becomes reusable.
UPDATE builds b SET reuse_commit = b.commit_requested
 WHERE b.commit_requested IS NOT NULL AND b.upload_id IS NULL
   AND b.status IN ('queued', 'running', 'succeeded')
   AND b.id = (SELECT o.id FROM builds o
                WHERE o.service_id = b.service_id AND o.commit_requested = b.commit_requested
                  AND o.upload_id IS NULL AND o.status IN ('queued', 'running', 'succeeded')
                ORDER BY o.queued_at DESC, o.id DESC LIMIT 1);
CREATE UNIQUE INDEX builds_reusable ON builds (service_id, reuse_commit)
    WHERE reuse_commit IS NOT NULL AND status IN ('queued', 'running', 'succeeded');

-- Requests answered by an existing build: reading the requested id shows the build serving it.
CREATE TABLE build_reuses (
    request_id     UUID PRIMARY KEY,
    build_id       UUID NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    trigger_kind   TEXT NOT NULL,
    trigger_actor  TEXT,
    requested_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX build_reuses_build ON build_reuses (build_id);

-- Deploy, rollback, scale and cancel requests are operations too: the gateway answers 202 for
-- them and must be able to say `requested` before the deployer has consumed the command.
ALTER TABLE operations DROP CONSTRAINT operations_kind_check;
ALTER TABLE operations ADD CONSTRAINT operations_kind_check
    CHECK (kind IN ('build', 'deploy', 'rollback', 'scale', 'cancel'));
-- The environment a deploy/rollback/scale targets (NULL for builds).
ALTER TABLE operations ADD COLUMN environment TEXT;
-- For a `cancel`: the deploy/rollback/scale operation it asks to stop.
ALTER TABLE operations ADD COLUMN cancels UUID REFERENCES operations (id);
CREATE INDEX operations_cancels ON operations (cancels) WHERE cancels IS NOT NULL;

-- The target a deployment runs its instances on: the one the registry records for the
-- environment, read when the deployment starts (NULL while it is queued). Its instances are
-- started there, its weights applied there, whatever the environment is recorded on later.
-- Deployments started before this column take the target of their instances. One in flight
-- with no instance (yet) goes on with the process target, the built-in default then; an ended
-- one without instances keeps NULL (not known).
ALTER TABLE deployments
    ADD COLUMN target TEXT CHECK (target IN ('process', 'docker', 'kubernetes'));
UPDATE deployments d
    SET target = (SELECT i.target FROM instances i WHERE i.deployment_id = d.id LIMIT 1)
    WHERE d.status <> 'queued';
UPDATE deployments SET target = 'process'
    WHERE target IS NULL AND status IN ('progressing', 'rolling_back');

-- Each instance's target is the one its deployment started it on (adoption, stops and
-- restarts go there).
ALTER TABLE instances
    ADD CONSTRAINT instances_target CHECK (target IN ('process', 'docker', 'kubernetes'));

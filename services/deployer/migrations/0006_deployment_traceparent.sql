-- The W3C trace context of the command that asked for the deployment, so the engine that drives
-- it later (any replica, after any restart) continues that trace. NULL when tracing was off.
ALTER TABLE deployments ADD COLUMN traceparent TEXT;

-- The W3C trace context of the request that asked for the build, so the worker that drives it
-- later (any replica, after any restart) continues that trace. NULL when tracing was off.
ALTER TABLE builds ADD COLUMN traceparent TEXT;

-- Monitor replicas split the instances they probe into shards (a stable hash of the instance id
-- modulo `shards.count`). Each row is one shard's lease: the replica probing its instances and
-- until when; a NULL or past `expires_at` is free to claim. Rows are created at start-up.
CREATE TABLE monitor_shards (
    shard      INT PRIMARY KEY,
    owner      TEXT,
    expires_at TIMESTAMPTZ
);

-- The replicas taking part, renewed with their leases: a replica that holds no shard yet must
-- still count as live, or those holding every shard would never release its share.
CREATE TABLE monitor_replicas (
    owner      TEXT PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);

-- Operations are pruned by age (`retention.operations_days`), oldest first, in batches.
CREATE INDEX operations_created ON operations (created_at);

-- Dead letters: records a consumer of any service could never apply (undecodable, invalid,
-- refused by a domain rule, failing their signature check), read from the dead-letter topic so
-- platform admins can list and replay them (`/v1/admin/dead-letters`). The original record is
-- kept byte for byte (key, headers in order, value) so a replay republishes exactly it and it
-- is verified again like the first time.
CREATE TABLE dead_letters (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Where the dead-letter record itself was (redelivery of it inserts nothing), together
    -- with a hash of its content, since a broker that lost its data reuses offsets.
    fingerprint      BYTEA NOT NULL UNIQUE,
    -- Where the original was read from ('' / -1 when the record did not say).
    source_topic     TEXT NOT NULL,
    source_partition INT NOT NULL,
    source_offset    BIGINT NOT NULL,
    record_key       BYTEA,
    -- [[name, base64 value or null], ...] in the original order, without slipway_dlq_*.
    headers          JSONB NOT NULL,
    payload          BYTEA,
    -- From the original's ce_type / ce_id / ce_source headers, for filtering and display.
    event_type       TEXT,
    event_id         TEXT,
    event_source     TEXT,
    reason           TEXT NOT NULL,
    consumer_group   TEXT NOT NULL,
    attempts         INT NOT NULL,
    dead_lettered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    replayed_at      TIMESTAMPTZ,
    replayed_by      TEXT
);
CREATE INDEX dead_letters_group ON dead_letters (consumer_group, id);
CREATE INDEX dead_letters_topic ON dead_letters (source_topic, id);
CREATE INDEX dead_letters_type ON dead_letters (event_type, id);

-- The event log in PostgreSQL: the source of truth for deployments that share one log between nodes.
CREATE TABLE tally_events (
    global_position     BIGINT PRIMARY KEY,
    stream_id           TEXT   NOT NULL,
    stream_version      BIGINT NOT NULL,
    event_type          TEXT   NOT NULL,
    schema_version      INTEGER NOT NULL,
    recorded_at_ms      BIGINT NOT NULL,
    idempotency_key     TEXT   NOT NULL,
    command_fingerprint BIGINT NOT NULL,
    causation_id        TEXT   NOT NULL,
    correlation_id      TEXT   NOT NULL,
    traceparent         TEXT   NOT NULL,
    tracestate          TEXT   NOT NULL,
    payload             BYTEA  NOT NULL,
    UNIQUE (stream_id, stream_version)
);

-- The last assigned global position. Appenders take this row's lock first and hold it until commit, so
-- positions become visible strictly in order: a follower reading "after N" can never skip a late commit.
CREATE TABLE tally_log_head (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    position  BIGINT  NOT NULL
);
INSERT INTO tally_log_head (position) VALUES (0);

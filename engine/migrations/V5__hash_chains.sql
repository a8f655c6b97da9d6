-- Tamper evidence (issue 19, ADR 0011): each event's links in its stream's hash chain and in the log's,
-- SHA-256, 32 bytes each; NULL on events written before the chains (their links are computed when
-- needed). The head row keeps the log chain's last link and the position it belongs to, so appenders
-- link onto it without reading the log; a position behind the head (events appended by a build before
-- the chains) is caught up from the events themselves. Additive.
ALTER TABLE tally_events
    ADD COLUMN stream_hash BYTEA CHECK (stream_hash IS NULL OR octet_length(stream_hash) = 32),
    ADD COLUMN log_hash    BYTEA CHECK (log_hash IS NULL OR octet_length(log_hash) = 32);
ALTER TABLE tally_log_head
    ADD COLUMN log_hash          BYTEA,
    ADD COLUMN log_hash_position BIGINT NOT NULL DEFAULT 0;

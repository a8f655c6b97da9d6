-- Tamper evidence (issue 19, ADR 0011): each event's links in its stream's hash chain and in the log's,
-- SHA-256, 32 bytes each, both or neither; NULL only until a chaining node links the row (events
-- written before the chains, or by an older node, are linked in place by the next chaining node). The
-- head row keeps the log chain's last link and the position it belongs to, so appenders link onto it
-- without reading the log. Additive; the constraint is NOT VALID so adding it scans nothing (old rows
-- are NULL, which it allows) and holds older nodes up for no longer than the ALTER itself.
ALTER TABLE tally_events
    ADD COLUMN stream_hash BYTEA,
    ADD COLUMN log_hash    BYTEA;
ALTER TABLE tally_events ADD CONSTRAINT tally_events_links CHECK (
    (stream_hash IS NULL) = (log_hash IS NULL)
    AND (stream_hash IS NULL OR (octet_length(stream_hash) = 32 AND octet_length(log_hash) = 32))
) NOT VALID;
ALTER TABLE tally_log_head
    ADD COLUMN log_hash          BYTEA,
    ADD COLUMN log_hash_position BIGINT NOT NULL DEFAULT 0;

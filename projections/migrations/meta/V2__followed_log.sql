-- The log this read model follows (its identity, the first event of stream `$log`): a read model filled
-- from one log refuses to follow another.
CREATE TABLE tally_read_log (
    one       BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    log_id    TEXT NOT NULL,
    bound_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

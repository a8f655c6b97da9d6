-- Crypto-shredding (issue 19 item 4): the key that seals each wallet's personal data
-- (WalletEnrolledV2.sealed), kept beside the log and never in it. Erasure deletes the row; the events,
-- their hashes and every balance stay as written, and the sealed data can never be opened again.
-- A deleted row lives on as a dead tuple until VACUUM reclaims it (autovacuum does, or an operator
-- after an erasure), and in WAL and backups for as long as they are kept: see the README's "Erasure".
CREATE TABLE tally_personal_keys (
    stream_id  TEXT PRIMARY KEY,
    key        BYTEA NOT NULL CHECK (octet_length(key) = 32),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

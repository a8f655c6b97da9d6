-- Wallet snapshots: derived data, safe to delete at any time (wallets replay their log instead).
CREATE TABLE wallet_snapshots (
    stream_id   TEXT   NOT NULL,
    version     BIGINT NOT NULL CHECK (version >= 0),
    saved_at_ms BIGINT NOT NULL,
    bytes       BYTEA  NOT NULL,
    PRIMARY KEY (stream_id, version)
);

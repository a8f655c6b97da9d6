-- Sums across a tenant's wallets cannot overflow: NUMERIC, not BIGINT (about 9,300 wallets at the
-- largest balance a wallet may hold already pass the range of BIGINT). Queries read them back as int8
-- and answer "out of range" for a sum that does not fit. Counts (enrolments, active wallets, wallets)
-- stay BIGINT; a single wallet's figures stay BIGINT, and an event that would take one past it is
-- quarantined.
ALTER TABLE program_daily_stats
    ALTER COLUMN points_issued TYPE NUMERIC,
    ALTER COLUMN points_redeemed TYPE NUMERIC,
    ALTER COLUMN points_reversed TYPE NUMERIC,
    ALTER COLUMN points_adjusted TYPE NUMERIC,
    ALTER COLUMN points_forfeited TYPE NUMERIC,
    ALTER COLUMN points_purchased TYPE NUMERIC,
    ALTER COLUMN points_expired TYPE NUMERIC;
ALTER TABLE tenant_liability
    ALTER COLUMN outstanding_points TYPE NUMERIC,
    ALTER COLUMN negative_points TYPE NUMERIC;

-- Events this generation skipped because they cannot be stored (a poison event, or one the database
-- refuses for its data): no other rows of theirs exist, and their wallets' figures differ from the
-- log by exactly these events. Written in the transaction that moves the checkpoint past them.
CREATE TABLE quarantined_events (
    position       BIGINT PRIMARY KEY,
    stream         TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    reason         TEXT NOT NULL,
    quarantined_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

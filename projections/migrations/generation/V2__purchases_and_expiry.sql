-- Points bought with credit packages and points that expired, per tenant and day, so the daily figures
-- add up to the ledger again. Rows written before this version have 0 here: rebuild the read model
-- (`tally projections rebuild postgres`) to count earlier purchases and expiries.
ALTER TABLE program_daily_stats
    ADD COLUMN points_purchased BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN points_expired   BIGINT NOT NULL DEFAULT 0;

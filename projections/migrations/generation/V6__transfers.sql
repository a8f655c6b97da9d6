-- Points moved between a tenant's wallets (WalletService.TransferPoints), net per tenant and day: 0 once
-- every transfer of the day has ended, less by what is in transit, so the daily figures still add up to
-- the ledger while a transfer is on its way. No transfer was recorded before this version.
ALTER TABLE program_daily_stats
    ADD COLUMN points_transferred NUMERIC NOT NULL DEFAULT 0;

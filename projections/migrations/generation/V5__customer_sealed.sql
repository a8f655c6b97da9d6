-- Crypto-shredding (issue 19 item 4, ADR 0012): a wallet row keeps its customer's data only sealed
-- (WalletEnrolledV2.sealed, encoded), opened with the wallet's key when the row is read, so destroying the
-- key erases the data from the read model too, old row versions included. From here on customer_ref
-- holds only what a version 1 enrolment recorded in clear (as the log itself does).
ALTER TABLE wallets ADD COLUMN customer_sealed BYTEA NOT NULL DEFAULT '\x'::bytea;

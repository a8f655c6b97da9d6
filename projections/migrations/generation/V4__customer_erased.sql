-- Crypto-shredding (issue 19 item 4): a wallet whose customer was erased (CustomerErased) keeps its
-- figures and drops its customer_ref, which this marks as gone for good rather than never given.
ALTER TABLE wallets ADD COLUMN customer_erased BOOLEAN NOT NULL DEFAULT false;

-- The reporting read model, created in each generation's own schema (search_path is set to it).
-- Everything here is derived from the event log and can be rebuilt from it.

-- The last log position applied; moves in the same transaction as the rows it covers.
CREATE TABLE checkpoint (
    only_row   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    position   BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO checkpoint (position) VALUES (0);

CREATE TABLE wallets (
    tenant_id         TEXT NOT NULL,
    wallet_id         TEXT NOT NULL,
    customer_ref      TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('active', 'closed')),
    balance           BIGINT NOT NULL,
    lifetime_earned   BIGINT NOT NULL,
    lifetime_redeemed BIGINT NOT NULL,
    lifetime_reversed BIGINT NOT NULL,
    lifetime_adjusted BIGINT NOT NULL,
    forfeited         BIGINT NOT NULL,
    events            BIGINT NOT NULL,
    enrolled_at       TIMESTAMPTZ,
    last_activity_at  TIMESTAMPTZ NOT NULL,
    last_position     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, wallet_id)
);
CREATE INDEX wallets_by_balance ON wallets (tenant_id, balance, wallet_id);
CREATE INDEX wallets_by_activity ON wallets (tenant_id, last_activity_at, wallet_id);

-- One row per wallet event but enrolments: kind is earn, redeem, adjust, reverse or close; points is
-- the signed effect on the balance; reference is the order (earn, reverse), reward (redeem) or staff
-- member (adjust).
CREATE TABLE ledger_entries (
    position        BIGINT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    wallet_id       TEXT NOT NULL,
    stream_version  BIGINT NOT NULL,
    kind            TEXT NOT NULL,
    points          BIGINT NOT NULL,
    reason          TEXT NOT NULL,
    reference       TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX ledger_entries_by_wallet ON ledger_entries (tenant_id, wallet_id, position);

-- Per tenant and UTC day. points_reversed counts points actually taken back; points_adjusted is signed.
CREATE TABLE program_daily_stats (
    tenant_id        TEXT NOT NULL,
    day              DATE NOT NULL,
    points_issued    BIGINT NOT NULL,
    points_redeemed  BIGINT NOT NULL,
    points_reversed  BIGINT NOT NULL,
    points_adjusted  BIGINT NOT NULL,
    points_forfeited BIGINT NOT NULL,
    enrolments       BIGINT NOT NULL,
    active_wallets   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, day)
);

-- Which wallets had an event on which day: makes active_wallets exact, and distinct over ranges.
CREATE TABLE wallet_active_days (
    tenant_id TEXT NOT NULL,
    day       DATE NOT NULL,
    wallet_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, day, wallet_id)
);

-- The points a tenant owes its customers (positive balances) and what customers owe back (negative).
CREATE TABLE tenant_liability (
    tenant_id          TEXT PRIMARY KEY,
    outstanding_points BIGINT NOT NULL,
    negative_points    BIGINT NOT NULL,
    wallets            BIGINT NOT NULL
);

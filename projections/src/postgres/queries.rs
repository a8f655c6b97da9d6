//! What the `ReportingService` reads: pages of wallets, a tenant's daily figures and its liability, each
//! in one read-only snapshot of the live generation (through the `tally_read` views) with the position
//! it reflects.
//!
//! The sums are NUMERIC in the tables and `i64` in the answers: one that does not fit is
//! [`ProjectionError::OutOfRange`] for that query, naming the tenant and the figure.

use time::{Date, OffsetDateTime};
use tokio_postgres::IsolationLevel;
use tokio_postgres::error::SqlState;

use super::wallets::{read as read_wallet, select_columns};
use super::{PostgresReadModel, int, timestamp, unsigned};
use crate::ProjectionError;
use crate::model::{DayStats, Liability, WalletSummary};

/// How `ListWallets` orders wallets (largest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalletOrder {
    Balance,
    LastActivity,
}

/// Where a page of wallets continues: the last row's sort value (balance, or last activity in ms)
/// and wallet id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletCursor {
    pub value: i64,
    pub wallet_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletRow {
    pub wallet_id: String,
    pub summary: WalletSummary,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletPage {
    pub wallets: Vec<WalletRow>,
    /// Set when more wallets follow.
    pub next: Option<WalletCursor>,
    pub as_of_position: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    pub days: Vec<(Date, DayStats)>,
    /// Sums over the range; `active_wallets` counts each wallet once however many days it was active.
    pub totals: DayStats,
    pub as_of_position: u64,
}

impl PostgresReadModel {
    /// The log position the live read model reflects.
    pub async fn checkpoint(&self) -> Result<u64, ProjectionError> {
        let client = self.pool.get().await?;
        let position: i64 = client.query_one("SELECT position FROM tally_read.checkpoint", &[]).await?.get(0);
        unsigned(position, "checkpoint")
    }

    /// A page of a tenant's wallets, largest first by `order`, after `after` if given.
    pub async fn list_wallets(
        &self,
        tenant: &str,
        order: WalletOrder,
        page_size: usize,
        after: Option<&WalletCursor>,
    ) -> Result<WalletPage, ProjectionError> {
        let columns = select_columns();
        let mut client = self.pool.get().await?;
        let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
        let as_of: i64 = tx.query_one("SELECT position FROM tally_read.checkpoint", &[]).await?.get(0);
        let limit = int(page_size as u64 + 1, "page size")?;
        let wallet_after = after.map_or("", |c| c.wallet_id.as_str());
        let rows = match order {
            WalletOrder::Balance => {
                let value = after.map_or(i64::MAX, |c| c.value);
                let sql = format!(
                    "SELECT {columns} FROM tally_read.wallets WHERE tenant_id = $1 AND (balance, wallet_id) < ($2, $3)
                     ORDER BY balance DESC, wallet_id DESC LIMIT $4"
                );
                let wallet_after = if after.is_some() { wallet_after } else { "\u{10ffff}" };
                tx.query(&sql, &[&tenant, &value, &wallet_after, &limit]).await?
            }
            WalletOrder::LastActivity => {
                let value = after.map_or(OffsetDateTime::from_unix_timestamp(253_402_300_799).unwrap_or(OffsetDateTime::UNIX_EPOCH), |c| {
                    timestamp(c.value)
                });
                let sql = format!(
                    "SELECT {columns} FROM tally_read.wallets WHERE tenant_id = $1 AND (last_activity_at, wallet_id) < ($2, $3)
                     ORDER BY last_activity_at DESC, wallet_id DESC LIMIT $4"
                );
                let wallet_after = if after.is_some() { wallet_after } else { "\u{10ffff}" };
                tx.query(&sql, &[&tenant, &value, &wallet_after, &limit]).await?
            }
        };
        tx.commit().await?;
        let mut wallets = Vec::with_capacity(rows.len());
        for row in &rows {
            let (wallet_id, summary) = read_wallet(row)?;
            wallets.push(WalletRow { wallet_id, summary });
        }
        let next = if wallets.len() > page_size {
            wallets.truncate(page_size);
            wallets.last().map(|last| WalletCursor {
                value: match order {
                    WalletOrder::Balance => last.summary.balance,
                    WalletOrder::LastActivity => last.summary.last_activity_ms,
                },
                wallet_id: last.wallet_id.clone(),
            })
        } else {
            None
        };
        Ok(WalletPage { wallets, next, as_of_position: unsigned(as_of, "checkpoint")? })
    }

    /// A tenant's daily figures between two UTC days, inclusive.
    pub async fn program_stats(&self, tenant: &str, from: Date, to: Date) -> Result<ProgramStats, ProjectionError> {
        let mut client = self.pool.get().await?;
        let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
        let as_of: i64 = tx.query_one("SELECT position FROM tally_read.checkpoint", &[]).await?.get(0);
        let rows = tx
            .query(
                "SELECT day, points_issued::int8, points_redeemed::int8, points_reversed::int8, points_adjusted::int8,
                        points_forfeited::int8, enrolments, active_wallets, points_purchased::int8, points_expired::int8,
                        points_transferred::int8
                 FROM tally_read.program_daily_stats WHERE tenant_id = $1 AND day BETWEEN $2 AND $3 ORDER BY day",
                &[&tenant, &from, &to],
            )
            .await
            .map_err(|e| out_of_range(e, &format!("a daily figure of tenant {tenant}")))?;
        let active: i64 = tx
            .query_one(
                "SELECT count(DISTINCT wallet_id) FROM tally_read.wallet_active_days WHERE tenant_id = $1 AND day BETWEEN $2 AND $3",
                &[&tenant, &from, &to],
            )
            .await?
            .get(0);
        tx.commit().await?;
        let mut totals = DayStats::default();
        let days = rows
            .iter()
            .map(|row| {
                let stats = DayStats {
                    points_issued: row.get(1),
                    points_redeemed: row.get(2),
                    points_reversed: row.get(3),
                    points_adjusted: row.get(4),
                    points_forfeited: row.get(5),
                    enrolments: row.get(6),
                    active_wallets: row.get(7),
                    points_purchased: row.get(8),
                    points_expired: row.get(9),
                    points_transferred: row.get(10),
                };
                totals = checked_sum(&totals, &stats)
                    .ok_or_else(|| ProjectionError::OutOfRange(format!("a total of tenant {tenant} from {from} to {to}")))?;
                Ok((row.get::<_, Date>(0), stats))
            })
            .collect::<Result<_, ProjectionError>>()?;
        totals.active_wallets = active;
        Ok(ProgramStats { days, totals, as_of_position: unsigned(as_of, "checkpoint")? })
    }

    /// A tenant's outstanding points, and the position they reflect.
    pub async fn liability(&self, tenant: &str) -> Result<(Liability, u64), ProjectionError> {
        let mut client = self.pool.get().await?;
        let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
        let as_of: i64 = tx.query_one("SELECT position FROM tally_read.checkpoint", &[]).await?.get(0);
        let row = tx
            .query_opt(
                "SELECT outstanding_points::int8, negative_points::int8, wallets FROM tally_read.tenant_liability WHERE tenant_id = $1",
                &[&tenant],
            )
            .await
            .map_err(|e| out_of_range(e, &format!("the liability of tenant {tenant}")))?;
        tx.commit().await?;
        let liability = row.map_or_else(Liability::default, |row| Liability {
            outstanding_points: row.get(0),
            negative_points: row.get(1),
            wallets: row.get(2),
        });
        Ok((liability, unsigned(as_of, "checkpoint")?))
    }
}

/// A NUMERIC sum read back as `i64` that does not fit: [`ProjectionError::OutOfRange`].
fn out_of_range(error: tokio_postgres::Error, what: &str) -> ProjectionError {
    if error.code() == Some(&SqlState::NUMERIC_VALUE_OUT_OF_RANGE) { ProjectionError::OutOfRange(what.to_owned()) } else { error.into() }
}

/// `a + b`, figure by figure; `None` if one leaves `i64`.
fn checked_sum(a: &DayStats, b: &DayStats) -> Option<DayStats> {
    Some(DayStats {
        points_issued: a.points_issued.checked_add(b.points_issued)?,
        points_redeemed: a.points_redeemed.checked_add(b.points_redeemed)?,
        points_reversed: a.points_reversed.checked_add(b.points_reversed)?,
        points_adjusted: a.points_adjusted.checked_add(b.points_adjusted)?,
        points_forfeited: a.points_forfeited.checked_add(b.points_forfeited)?,
        points_purchased: a.points_purchased.checked_add(b.points_purchased)?,
        points_expired: a.points_expired.checked_add(b.points_expired)?,
        points_transferred: a.points_transferred.checked_add(b.points_transferred)?,
        enrolments: a.enrolments.checked_add(b.enrolments)?,
        active_wallets: a.active_wallets.checked_add(b.active_wallets)?,
    })
}

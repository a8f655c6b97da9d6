//! A rebuild's replay into a new generation as a bulk load. Only this process writes that generation
//! until it is promoted, and nobody reads it before: its secondary indexes are put off until the
//! promotion, every wallet's row is kept in memory (`Replaying`) and written once by COPY, with the
//! liability it adds up to, and an active day known to be new goes in by COPY.

use std::collections::HashMap;
use std::sync::Arc;

use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;

use super::wallets::{WalletColumns, copy_sql, copy_types};
use super::{PostgresReadModel, schema};
use crate::ProjectionError;
use crate::model::{WalletSummary, day_of};
use crate::movement::Movement;

/// Most wallets a replay keeps in memory (about 200 bytes each) unless set otherwise; beyond it, their
/// rows are written out and the replay goes on as following does (slower, same result).
pub const REPLAY_WALLETS_DEFAULT_MAX: usize = 500_000;

/// A generation being replayed by this process, which alone writes it until it is promoted: every
/// wallet's summary so far, written once by COPY (with the liability they add up to) when the
/// generation is promoted instead of upserted batch after batch; and each wallet's latest active day,
/// so activity on a later day is certainly a new `wallet_active_days` row.
#[derive(Debug, Default)]
pub(super) struct Replaying {
    wallets: HashMap<Arc<str>, HashMap<Arc<str>, ReplayedWallet>>,
    count: usize,
}

#[derive(Debug, Default)]
struct ReplayedWallet {
    summary: WalletSummary,
    latest_active_day: i64,
}

impl Replaying {
    /// Whether `wallet` was certainly not yet active on `day`, or any later day.
    pub(super) fn certainly_new(&self, tenant: &str, wallet: &str, day: i64) -> bool {
        self.wallets.get(tenant).and_then(|wallets| wallets.get(wallet)).is_none_or(|w| day > w.latest_active_day)
    }

    /// Folds a committed batch in.
    pub(super) fn record(&mut self, movements: &[Movement]) {
        for movement in movements {
            let wallets = self.wallets.entry(Arc::clone(&movement.tenant)).or_default();
            let day = day_of(movement.recorded_at_ms);
            let wallet = match wallets.get_mut(&*movement.wallet) {
                Some(wallet) => wallet,
                None => {
                    self.count += 1;
                    wallets.entry(Arc::clone(&movement.wallet)).or_insert(ReplayedWallet { latest_active_day: day, ..Default::default() })
                }
            };
            wallet.summary.apply(movement);
            wallet.latest_active_day = wallet.latest_active_day.max(day);
        }
    }
}

/// A generation this process is rebuilding.
#[derive(Debug)]
pub(super) enum Owned {
    /// Its wallets are kept in memory.
    Holding(Replaying),
    /// A batch or the promotion has them right now; a batch that finds this was cut short before.
    InFlight,
    /// Written out at the bound: batches upsert wallets from then on.
    WrittenOut,
}

/// What a batch or the promotion took of an [`Owned`] generation.
#[derive(Debug)]
pub(super) enum Taken {
    NotOwned,
    Holding(Replaying),
    WrittenOut,
}

/// How a batch treats the wallets' rows.
#[derive(Debug, Clone, Copy)]
pub(super) enum Wallets<'r> {
    /// Upserted with the batch.
    Upsert,
    /// Kept in memory by a replay (`Replaying`): not written now.
    Replayed(&'r Replaying),
    /// The replay's wallets are written out first, then upserted with the batch as following does.
    WriteOut(&'r Replaying),
}

impl PostgresReadModel {
    /// Takes what this process holds of `generation` for a batch or the promotion, leaving it in flight.
    pub(super) fn take(&self, generation: u64) -> Result<Taken, ProjectionError> {
        let mut rebuilding = self.rebuilding.lock();
        let Some(owned) = rebuilding.get_mut(&generation) else { return Ok(Taken::NotOwned) };
        match std::mem::replace(owned, Owned::InFlight) {
            Owned::Holding(replaying) => Ok(Taken::Holding(replaying)),
            Owned::WrittenOut => {
                *owned = Owned::WrittenOut;
                Ok(Taken::WrittenOut)
            }
            Owned::InFlight => Err(ProjectionError::ReplayLost { generation }),
        }
    }

    pub(super) fn put_back(&self, generation: u64, owned: Owned) {
        self.rebuilding.lock().insert(generation, owned);
    }

    /// This process no longer rebuilds `generation`: what it held goes, and so does its lock (the
    /// session that holds it closes).
    pub(super) fn let_go(&self, generation: u64) {
        self.rebuilding.lock().remove(&generation);
        self.owners.lock().remove(&generation);
    }

    /// How a batch of `taken` writes wallets: kept in memory up to the bound, then written out once.
    pub(super) fn wallets_for<'t>(&self, taken: &'t Taken) -> Wallets<'t> {
        match taken {
            Taken::NotOwned | Taken::WrittenOut => Wallets::Upsert,
            Taken::Holding(r) if r.count > self.replay_wallets_max => Wallets::WriteOut(r),
            Taken::Holding(r) => Wallets::Replayed(r),
        }
    }
}

/// Writes out a replay's wallets and the liability they add up to. A replayed generation's wallets and
/// liability are written here first, once (batches before kept them in memory): the tables hold no
/// rows yet, so the liability is summed from the rows just written, by the database, as NUMERIC (a
/// tenant's sum may exceed `i64`).
pub(super) async fn write_out(tx: &tokio_postgres::Transaction<'_>, schema: &str, replaying: &Replaying) -> Result<(), ProjectionError> {
    let writer = BinaryCopyInWriter::new(tx.copy_in(&copy_sql(schema)).await?, &copy_types());
    pin_mut!(writer);
    for (tenant, wallets) in &replaying.wallets {
        for (wallet, replayed) in wallets {
            let row = WalletColumns::of(tenant, wallet, &replayed.summary)?;
            writer.as_mut().write(&row.values()).await?;
        }
    }
    writer.finish().await?;
    tx.execute(
        &format!(
            "INSERT INTO {schema}.tenant_liability AS l (tenant_id, outstanding_points, negative_points, wallets)
             SELECT tenant_id, sum(greatest(balance, 0)), sum(least(balance, 0)), count(*) FROM {schema}.wallets GROUP BY tenant_id
             ON CONFLICT (tenant_id) DO UPDATE SET
                 outstanding_points = l.outstanding_points + EXCLUDED.outstanding_points,
                 negative_points = l.negative_points + EXCLUDED.negative_points,
                 wallets = l.wallets + EXCLUDED.wallets"
        ),
        &[],
    )
    .await?;
    Ok(())
}

/// A new generation is filled by a replay before anyone reads it: its secondary indexes (those no
/// upsert needs) are dropped, and their definitions kept in `deferred_indexes`, so the replay does not
/// maintain them row by row; [`build_deferred_indexes`] builds each once, in bulk, when it is promoted.
pub(super) async fn defer_indexes(admin: &mut tokio_postgres::Client, generation: u64) -> Result<(), ProjectionError> {
    let schema = schema(generation);
    let tx = admin.transaction().await?;
    let indexes: Vec<(String, String)> = tx
        .query(
            "SELECT c.relname::text, pg_get_indexdef(i.indexrelid) FROM pg_index i
                 JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND NOT i.indisprimary AND NOT i.indisunique",
            &[&schema],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    tx.batch_execute(&format!("CREATE TABLE {schema}.deferred_indexes (name TEXT PRIMARY KEY, definition TEXT NOT NULL)")).await?;
    for (name, definition) in &indexes {
        tx.execute(&format!("INSERT INTO {schema}.deferred_indexes VALUES ($1, $2)"), &[name, definition]).await?;
        tx.batch_execute(&format!("DROP INDEX {schema}.{name}")).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Builds the indexes [`defer_indexes`] put off, inside the promotion's transaction.
pub(super) async fn build_deferred_indexes(tx: &tokio_postgres::Transaction<'_>, generation: u64) -> Result<(), ProjectionError> {
    let schema = schema(generation);
    let table = format!("{schema}.deferred_indexes");
    let deferred: Option<String> = tx.query_one("SELECT to_regclass($1)::text", &[&table]).await?.get(0);
    if deferred.is_none() {
        return Ok(());
    }
    for row in tx.query(&format!("SELECT definition FROM {table} ORDER BY name"), &[]).await? {
        tx.batch_execute(row.get(0)).await?;
    }
    tx.batch_execute(&format!("DROP TABLE {table}")).await?;
    Ok(())
}

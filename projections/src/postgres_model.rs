//! The reporting read model in PostgreSQL: `wallets`, `ledger_entries`, `program_daily_stats`,
//! `wallet_active_days` and `tenant_liability`, read by the `ReportingService` and by any BI tool.
//!
//! Each generation lives in its own schema `tally_read_g<N>`, created by the versioned migrations in
//! `migrations/generation` (refinery). Views in schema `tally_read` point at the live generation; a
//! promotion replaces them in one transaction, so readers switch atomically and never see a half-built
//! model. A batch is one transaction: the checkpoint row is locked first and must still hold the
//! position the batch starts from (so two runners on two nodes cannot both apply it), then the ledger
//! rows go in by binary COPY and the aggregates by `unnest` upserts, then the checkpoint moves.
//!
//! A rebuild's replay into a new generation, which only this process writes until it is promoted, is a
//! bulk load: the generation's secondary indexes are put off until the promotion, the wallets' rows are
//! kept in memory and written once by COPY in the promotion's transaction (with the liability), and
//! active days known to be new go in by COPY. Nobody reads a generation before it is promoted, and the
//! promotion is atomic, so readers never see the difference.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::pin_mut;
use parking_lot::Mutex;
use time::{Date, OffsetDateTime};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::model::{DayStats, Liability, WalletSummary, day_of};
use crate::movement::{Movement, MovementKind};
use crate::{Generation, ProjectionError, ReadModel};

/// The projection's name, in status output and metrics.
pub const NAME: &str = "reporting";
const POOL_SIZE_MAX: usize = 4;
/// Serialises generation changes between nodes (`pg_advisory_lock` key).
const GENERATIONS_LOCK: i64 = 0x7461_6c6c_7972_6d00;
const VIEWS: [&str; 6] = ["checkpoint", "wallets", "ledger_entries", "program_daily_stats", "wallet_active_days", "tenant_liability"];

mod meta {
    refinery::embed_migrations!("migrations/meta");
}
mod generation {
    refinery::embed_migrations!("migrations/generation");
}

#[derive(Debug, Clone)]
pub struct PostgresReadModel {
    pool: Pool,
    config: tokio_postgres::Config,
    /// Generations this process is rebuilding (it alone writes them until they are promoted) and what
    /// it holds of them in memory.
    rebuilding: Arc<Mutex<HashMap<u64, Owned>>>,
    /// Per generation this process rebuilds, the session holding its rebuild lock.
    owners: Arc<Mutex<HashMap<u64, tokio_postgres::Client>>>,
    replay_wallets_max: usize,
}

/// A generation being replayed by this process, which alone writes it until it is promoted: every
/// wallet's summary so far, written once by COPY (with the liability they add up to) when the
/// generation is promoted instead of upserted batch after batch; and each wallet's latest active day,
/// so activity on a later day is certainly a new `wallet_active_days` row.
#[derive(Debug, Default)]
struct Replaying {
    wallets: HashMap<Arc<str>, HashMap<Arc<str>, ReplayedWallet>>,
    count: usize,
}

#[derive(Debug, Default)]
struct ReplayedWallet {
    summary: WalletSummary,
    latest_active_day: i64,
}

/// Most wallets a replay keeps in memory (about 200 bytes each) unless set otherwise; beyond it, their
/// rows are written out and the replay goes on as following does (slower, same result).
pub const REPLAY_WALLETS_DEFAULT_MAX: usize = 500_000;

impl Replaying {
    /// Whether `wallet` was certainly not yet active on `day`, or any later day.
    fn certainly_new(&self, tenant: &str, wallet: &str, day: i64) -> bool {
        self.wallets.get(tenant).and_then(|wallets| wallets.get(wallet)).is_none_or(|w| day > w.latest_active_day)
    }

    /// Folds a committed batch in.
    fn record(&mut self, movements: &[Movement]) {
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
enum Owned {
    /// Its wallets are kept in memory.
    Holding(Replaying),
    /// A batch or the promotion has them right now; a batch that finds this was cut short before.
    InFlight,
    /// Written out at the bound: batches upsert wallets from then on.
    WrittenOut,
}

/// What a batch or the promotion took of an [`Owned`] generation.
#[derive(Debug)]
enum Taken {
    NotOwned,
    Holding(Replaying),
    WrittenOut,
}

/// How a batch treats the wallets' rows.
#[derive(Debug, Clone, Copy)]
enum Wallets<'r> {
    /// Upserted with the batch.
    Upsert,
    /// Kept in memory by a replay (`Replaying`): not written now.
    Replayed(&'r Replaying),
    /// The replay's wallets are written out first, then upserted with the batch as following does.
    WriteOut(&'r Replaying),
}

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

fn schema(generation: u64) -> String {
    format!("tally_read_g{generation}")
}

fn int(value: u64, what: &str) -> Result<i64, ProjectionError> {
    i64::try_from(value).map_err(|_| ProjectionError::Invalid(format!("{what} {value} exceeds the range of BIGINT")))
}

fn unsigned(value: i64, what: &str) -> Result<u64, ProjectionError> {
    u64::try_from(value).map_err(|_| ProjectionError::Corrupt { key: what.to_owned(), reason: format!("negative value {value}") })
}

fn timestamp(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn millis(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The calendar date of a day number (days since 1970-01-01).
pub fn date_of_day(day: i64) -> Date {
    OffsetDateTime::UNIX_EPOCH.date() + time::Duration::days(day)
}

/// An undefined schema or table means the generation was dropped under us.
fn missing_generation(error: &tokio_postgres::Error) -> bool {
    matches!(error.code(), Some(code) if *code == SqlState::INVALID_SCHEMA_NAME || *code == SqlState::UNDEFINED_TABLE)
}

impl PostgresReadModel {
    /// Connects (`postgres://...` URL or `host=... user=...` string), applies pending migrations, and
    /// creates the first generation if there is none.
    pub async fn connect(url: &str) -> Result<Self, ProjectionError> {
        let config: tokio_postgres::Config = url.parse()?;
        let manager =
            Manager::from_config(config.clone(), tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager).max_size(POOL_SIZE_MAX).build().map_err(|e| ProjectionError::Invalid(e.to_string()))?;
        let model =
            Self { pool, config, rebuilding: Arc::default(), owners: Arc::default(), replay_wallets_max: REPLAY_WALLETS_DEFAULT_MAX };
        let mut admin = model.admin().await?;
        // Nodes starting together take turns, migrations included.
        admin.execute("SELECT pg_advisory_lock($1)", &[&GENERATIONS_LOCK]).await?;
        let result = set_up(&mut admin).await;
        let _ = admin.execute("SELECT pg_advisory_unlock($1)", &[&GENERATIONS_LOCK]).await;
        result?;
        Ok(model)
    }

    /// Sets how many wallets a rebuild's replay keeps in memory before it writes them out.
    pub fn with_replay_wallets_max(mut self, wallets: usize) -> Self {
        self.replay_wallets_max = wallets;
        self
    }

    /// A connection of its own, outside the pool, for schema changes (migrations set `search_path`).
    async fn admin(&self) -> Result<tokio_postgres::Client, ProjectionError> {
        let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "read-model admin connection closed");
            }
        });
        Ok(client)
    }

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
        const COLUMNS: &str = "wallet_id, customer_ref, status, balance, lifetime_earned, lifetime_redeemed, lifetime_reversed, \
             lifetime_adjusted, forfeited, events, enrolled_at, last_activity_at, last_position";
        let mut client = self.pool.get().await?;
        let tx = client.build_transaction().isolation_level(tokio_postgres::IsolationLevel::RepeatableRead).read_only(true).start().await?;
        let as_of: i64 = tx.query_one("SELECT position FROM tally_read.checkpoint", &[]).await?.get(0);
        let limit = int(page_size as u64 + 1, "page size")?;
        let wallet_after = after.map_or("", |c| c.wallet_id.as_str());
        let rows = match order {
            WalletOrder::Balance => {
                let value = after.map_or(i64::MAX, |c| c.value);
                let sql = format!(
                    "SELECT {COLUMNS} FROM tally_read.wallets WHERE tenant_id = $1 AND (balance, wallet_id) < ($2, $3)
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
                    "SELECT {COLUMNS} FROM tally_read.wallets WHERE tenant_id = $1 AND (last_activity_at, wallet_id) < ($2, $3)
                     ORDER BY last_activity_at DESC, wallet_id DESC LIMIT $4"
                );
                let wallet_after = if after.is_some() { wallet_after } else { "\u{10ffff}" };
                tx.query(&sql, &[&tenant, &value, &wallet_after, &limit]).await?
            }
        };
        tx.commit().await?;
        let mut wallets = Vec::with_capacity(rows.len());
        for row in &rows {
            let status: &str = row.get(2);
            let enrolled_at: Option<OffsetDateTime> = row.get(10);
            wallets.push(WalletRow {
                wallet_id: row.get(0),
                summary: WalletSummary {
                    customer_ref: row.get(1),
                    closed: status == "closed",
                    balance: row.get(3),
                    lifetime_earned: row.get(4),
                    lifetime_redeemed: row.get(5),
                    lifetime_reversed: row.get(6),
                    lifetime_adjusted: row.get(7),
                    forfeited: row.get(8),
                    events: unsigned(row.get(9), "wallets.events")?,
                    enrolled_at_ms: enrolled_at.map(millis),
                    last_activity_ms: millis(row.get(11)),
                    last_position: unsigned(row.get(12), "wallets.last_position")?,
                },
            });
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
        let tx = client.build_transaction().isolation_level(tokio_postgres::IsolationLevel::RepeatableRead).read_only(true).start().await?;
        let as_of: i64 = tx.query_one("SELECT position FROM tally_read.checkpoint", &[]).await?.get(0);
        let rows = tx
            .query(
                "SELECT day, points_issued, points_redeemed, points_reversed, points_adjusted, points_forfeited, enrolments, active_wallets,
                        points_purchased, points_expired
                 FROM tally_read.program_daily_stats WHERE tenant_id = $1 AND day BETWEEN $2 AND $3 ORDER BY day",
                &[&tenant, &from, &to],
            )
            .await?;
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
                };
                totals.add(&stats);
                (row.get::<_, Date>(0), stats)
            })
            .collect();
        totals.active_wallets = active;
        Ok(ProgramStats { days, totals, as_of_position: unsigned(as_of, "checkpoint")? })
    }

    /// A tenant's outstanding points, and the position they reflect.
    pub async fn liability(&self, tenant: &str) -> Result<(Liability, u64), ProjectionError> {
        let mut client = self.pool.get().await?;
        let tx = client.build_transaction().isolation_level(tokio_postgres::IsolationLevel::RepeatableRead).read_only(true).start().await?;
        let as_of: i64 = tx.query_one("SELECT position FROM tally_read.checkpoint", &[]).await?.get(0);
        let row = tx
            .query_opt(
                "SELECT outstanding_points, negative_points, wallets FROM tally_read.tenant_liability WHERE tenant_id = $1",
                &[&tenant],
            )
            .await?;
        tx.commit().await?;
        let liability = row.map_or_else(Liability::default, |row| Liability {
            outstanding_points: row.get(0),
            negative_points: row.get(1),
            wallets: row.get(2),
        });
        Ok((liability, unsigned(as_of, "checkpoint")?))
    }
}

/// Applies pending migrations, creating the first generation if there is none.
async fn set_up(admin: &mut tokio_postgres::Client) -> Result<(), ProjectionError> {
    meta::migrations::runner()
        .set_migration_table_name("tally_read_migrations")
        .run_async(admin)
        .await
        .map_err(|e| ProjectionError::Migration(e.to_string()))?;
    let live: Option<i32> = admin.query_opt("SELECT generation FROM tally_read_generations WHERE live", &[]).await?.map(|r| r.get(0));
    let live = match live {
        Some(live) => live,
        None => admin
            .query_one(
                "INSERT INTO tally_read_generations (generation, live, promoted_at)
                     VALUES (nextval('tally_read_generation_ids'), TRUE, now()) RETURNING generation",
                &[],
            )
            .await?
            .get(0),
    };
    let live = u64::try_from(live).unwrap_or(0);
    migrate_generation(admin, live).await?;
    admin.batch_execute(&views_sql(live)).await?;
    Ok(())
}

async fn migrate_generation(admin: &mut tokio_postgres::Client, generation: u64) -> Result<(), ProjectionError> {
    let schema = schema(generation);
    admin.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}")).await?;
    let result = generation::migrations::runner().set_migration_table_name("reporting_migrations").run_async(admin).await;
    admin.batch_execute("RESET search_path").await?;
    result.map(|_| ()).map_err(|e| ProjectionError::Migration(format!("{schema}: {e}")))
}

/// Points the `tally_read` views at `generation`. The columns are the same in every generation (one
/// set of migrations), so the views are replaced in place and keep their grants.
fn views_sql(generation: u64) -> String {
    let schema = schema(generation);
    let mut sql = String::new();
    for view in VIEWS {
        let _ = write!(sql, "CREATE OR REPLACE VIEW tally_read.{view} AS SELECT * FROM {schema}.{view};");
    }
    sql
}

/// What one batch adds to the aggregates, keyed in a fixed order so concurrent writers lock rows alike.
#[derive(Default)]
struct BatchDelta<'a> {
    wallets: BTreeMap<(&'a str, &'a str), WalletSummary>,
    days: BTreeMap<(&'a str, i64), DayStats>,
    active: BTreeMap<(&'a str, i64, &'a str), &'a Movement>,
}

impl<'a> BatchDelta<'a> {
    fn of(movements: &'a [Movement]) -> Self {
        let mut delta = Self::default();
        for movement in movements {
            let (tenant, wallet) = (&*movement.tenant, &*movement.wallet);
            let day = day_of(movement.recorded_at_ms);
            delta.wallets.entry((tenant, wallet)).or_default().apply(movement);
            delta.days.entry((tenant, day)).or_default().apply(movement);
            delta.active.entry((tenant, day, wallet)).or_insert(movement);
        }
        delta
    }
}

async fn write_ledger(tx: &deadpool_postgres::Transaction<'_>, schema: &str, movements: &[Movement]) -> Result<(), ProjectionError> {
    let sink = tx
        .copy_in(&format!(
            "COPY {schema}.ledger_entries (position, tenant_id, wallet_id, stream_version, kind, points, reason, reference, \
             idempotency_key, recorded_at) FROM STDIN BINARY"
        ))
        .await?;
    let types =
        [Type::INT8, Type::TEXT, Type::TEXT, Type::INT8, Type::TEXT, Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    for m in movements.iter().filter(|m| m.kind != MovementKind::Enroll) {
        let (position, version) = (int(m.position, "position")?, int(m.stream_version, "stream version")?);
        writer
            .as_mut()
            .write(&[
                &position,
                &&*m.tenant,
                &&*m.wallet,
                &version,
                &m.kind.as_str(),
                &m.points,
                &m.reason,
                &m.reference,
                &m.idempotency_key,
                &timestamp(m.recorded_at_ms),
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Upserts the wallets' deltas and returns how each tenant's liability moved.
async fn write_wallets(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    delta: &BatchDelta<'_>,
) -> Result<BTreeMap<String, Liability>, ProjectionError> {
    let n = delta.wallets.len();
    let (mut tenants, mut wallets, mut refs, mut statuses) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let mut figures: [Vec<i64>; 8] = Default::default();
    let (mut enrolled, mut last_activity) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for ((tenant, wallet), d) in &delta.wallets {
        tenants.push(*tenant);
        wallets.push(*wallet);
        refs.push(d.enrolled_at_ms.map(|_| d.customer_ref.as_str()));
        statuses.push(if d.closed { "closed" } else { "active" });
        for (column, value) in figures.iter_mut().zip([
            d.balance,
            d.lifetime_earned,
            d.lifetime_redeemed,
            d.lifetime_reversed,
            d.lifetime_adjusted,
            d.forfeited,
            int(d.events, "events")?,
            int(d.last_position, "position")?,
        ]) {
            column.push(value);
        }
        enrolled.push(d.enrolled_at_ms.map(timestamp));
        last_activity.push(timestamp(d.last_activity_ms));
    }
    let sql = format!(
        "INSERT INTO {schema}.wallets AS w (tenant_id, wallet_id, customer_ref, status, balance, lifetime_earned, lifetime_redeemed,
             lifetime_reversed, lifetime_adjusted, forfeited, events, last_position, enrolled_at, last_activity_at)
         SELECT t, wid, coalesce(cref, ''), st, bal, earned, redeemed, reversed, adjusted, forfeited, events, pos, enrolled, active
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::int8[], $8::int8[], $9::int8[],
                     $10::int8[], $11::int8[], $12::int8[], $13::timestamptz[], $14::timestamptz[])
              AS u(t, wid, cref, st, bal, earned, redeemed, reversed, adjusted, forfeited, events, pos, enrolled, active)
         ON CONFLICT (tenant_id, wallet_id) DO UPDATE SET
             customer_ref = CASE WHEN EXCLUDED.enrolled_at IS NULL THEN w.customer_ref ELSE EXCLUDED.customer_ref END,
             status = CASE WHEN EXCLUDED.status = 'closed' THEN 'closed' ELSE w.status END,
             balance = w.balance + EXCLUDED.balance,
             lifetime_earned = w.lifetime_earned + EXCLUDED.lifetime_earned,
             lifetime_redeemed = w.lifetime_redeemed + EXCLUDED.lifetime_redeemed,
             lifetime_reversed = w.lifetime_reversed + EXCLUDED.lifetime_reversed,
             lifetime_adjusted = w.lifetime_adjusted + EXCLUDED.lifetime_adjusted,
             forfeited = w.forfeited + EXCLUDED.forfeited,
             events = w.events + EXCLUDED.events,
             last_position = EXCLUDED.last_position,
             enrolled_at = coalesce(EXCLUDED.enrolled_at, w.enrolled_at),
             last_activity_at = EXCLUDED.last_activity_at
         RETURNING tenant_id, wallet_id, balance, (xmax = 0) AS inserted"
    );
    let statement = tx.prepare_cached(&sql).await?;
    let [balance, earned, redeemed, reversed, adjusted, forfeited, events, positions] = &figures;
    let rows = tx
        .query(
            &statement,
            &[
                &tenants,
                &wallets,
                &refs,
                &statuses,
                balance,
                earned,
                redeemed,
                reversed,
                adjusted,
                forfeited,
                events,
                positions,
                &enrolled,
                &last_activity,
            ],
        )
        .await?;
    let mut liability: BTreeMap<String, Liability> = BTreeMap::new();
    for row in rows {
        let (tenant, wallet, after, inserted): (&str, &str, i64, bool) = (row.get(0), row.get(1), row.get(2), row.get(3));
        let change = delta.wallets.get(&(tenant, wallet)).map_or(0, |d| d.balance);
        let before = (!inserted).then_some(after - change);
        liability.entry(tenant.to_owned()).or_default().shift(before, after);
    }
    Ok(liability)
}

/// Records which wallets were active on which days and returns the (tenant, day) pairs that gained one.
/// Rows `known` says are certainly new go in by binary COPY; the others are checked against the table.
async fn write_active_days(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    delta: &BatchDelta<'_>,
    known: Option<&Replaying>,
) -> Result<Vec<(String, Date)>, ProjectionError> {
    let (new, maybe): (Vec<_>, Vec<_>) =
        delta.active.keys().partition(|(tenant, day, wallet)| known.is_some_and(|known| known.certainly_new(tenant, wallet, *day)));
    let mut gained = Vec::with_capacity(new.len());
    if !new.is_empty() {
        let copy = format!("COPY {schema}.wallet_active_days (tenant_id, day, wallet_id) FROM STDIN BINARY");
        let writer = BinaryCopyInWriter::new(tx.copy_in(&copy).await?, &[Type::TEXT, Type::DATE, Type::TEXT]);
        pin_mut!(writer);
        for &&(tenant, day, wallet) in &new {
            writer.as_mut().write(&[&tenant, &date_of_day(day), &wallet]).await?;
            gained.push((tenant.to_owned(), date_of_day(day)));
        }
        writer.finish().await?;
    }
    if !maybe.is_empty() {
        let tenants: Vec<&str> = maybe.iter().map(|(tenant, _, _)| *tenant).collect();
        let days: Vec<Date> = maybe.iter().map(|(_, day, _)| date_of_day(*day)).collect();
        let wallets: Vec<&str> = maybe.iter().map(|(_, _, wallet)| *wallet).collect();
        let sql = format!(
            "INSERT INTO {schema}.wallet_active_days (tenant_id, day, wallet_id)
             SELECT * FROM unnest($1::text[], $2::date[], $3::text[]) ON CONFLICT DO NOTHING RETURNING tenant_id, day"
        );
        let statement = tx.prepare_cached(&sql).await?;
        let rows = tx.query(&statement, &[&tenants, &days, &wallets]).await?;
        gained.extend(rows.into_iter().map(|row| (row.get(0), row.get(1))));
    }
    Ok(gained)
}

async fn write_days(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    days: &BTreeMap<(String, Date), DayStats>,
) -> Result<(), ProjectionError> {
    let (mut tenants, mut dates) = (Vec::new(), Vec::new());
    let mut columns: [Vec<i64>; 9] = Default::default();
    for ((tenant, day), s) in days {
        tenants.push(tenant.as_str());
        dates.push(*day);
        for (column, value) in columns.iter_mut().zip([
            s.points_issued,
            s.points_redeemed,
            s.points_reversed,
            s.points_adjusted,
            s.points_forfeited,
            s.enrolments,
            s.active_wallets,
            s.points_purchased,
            s.points_expired,
        ]) {
            column.push(value);
        }
    }
    let sql = format!(
        "INSERT INTO {schema}.program_daily_stats AS d (tenant_id, day, points_issued, points_redeemed, points_reversed,
             points_adjusted, points_forfeited, enrolments, active_wallets, points_purchased, points_expired)
         SELECT * FROM unnest($1::text[], $2::date[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::int8[], $9::int8[],
                              $10::int8[], $11::int8[])
         ON CONFLICT (tenant_id, day) DO UPDATE SET
             points_issued = d.points_issued + EXCLUDED.points_issued,
             points_redeemed = d.points_redeemed + EXCLUDED.points_redeemed,
             points_reversed = d.points_reversed + EXCLUDED.points_reversed,
             points_adjusted = d.points_adjusted + EXCLUDED.points_adjusted,
             points_forfeited = d.points_forfeited + EXCLUDED.points_forfeited,
             enrolments = d.enrolments + EXCLUDED.enrolments,
             active_wallets = d.active_wallets + EXCLUDED.active_wallets,
             points_purchased = d.points_purchased + EXCLUDED.points_purchased,
             points_expired = d.points_expired + EXCLUDED.points_expired"
    );
    let statement = tx.prepare_cached(&sql).await?;
    let [issued, redeemed, reversed, adjusted, forfeited, enrolments, active, purchased, expired] = &columns;
    tx.execute(&statement, &[&tenants, &dates, issued, redeemed, reversed, adjusted, forfeited, enrolments, active, purchased, expired])
        .await?;
    Ok(())
}

async fn write_liability(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
    liability: &BTreeMap<String, Liability>,
) -> Result<(), ProjectionError> {
    let tenants: Vec<&str> = liability.keys().map(String::as_str).collect();
    let outstanding: Vec<i64> = liability.values().map(|l| l.outstanding_points).collect();
    let negative: Vec<i64> = liability.values().map(|l| l.negative_points).collect();
    let wallets: Vec<i64> = liability.values().map(|l| l.wallets).collect();
    let sql = format!(
        "INSERT INTO {schema}.tenant_liability AS l (tenant_id, outstanding_points, negative_points, wallets)
         SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[])
         ON CONFLICT (tenant_id) DO UPDATE SET
             outstanding_points = l.outstanding_points + EXCLUDED.outstanding_points,
             negative_points = l.negative_points + EXCLUDED.negative_points,
             wallets = l.wallets + EXCLUDED.wallets"
    );
    let statement = tx.prepare(&sql).await?;
    tx.execute(&statement, &[&tenants, &outstanding, &negative, &wallets]).await?;
    Ok(())
}

/// Writes out a replay's wallets (the table holds none of them yet) and the liability they add up to.
async fn write_out(tx: &tokio_postgres::Transaction<'_>, schema: &str, replaying: &Replaying) -> Result<(), ProjectionError> {
    let copy = format!(
        "COPY {schema}.wallets (tenant_id, wallet_id, customer_ref, status, balance, lifetime_earned, lifetime_redeemed,
             lifetime_reversed, lifetime_adjusted, forfeited, events, last_position, enrolled_at, last_activity_at) FROM STDIN BINARY"
    );
    let mut types = vec![Type::TEXT; 4];
    types.extend([Type::INT8; 8]);
    types.extend([Type::TIMESTAMPTZ; 2]);
    let writer = BinaryCopyInWriter::new(tx.copy_in(&copy).await?, &types);
    pin_mut!(writer);
    let mut liability: BTreeMap<String, Liability> = BTreeMap::new();
    for (tenant, wallets) in &replaying.wallets {
        let owed = liability.entry(tenant.to_string()).or_default();
        for (wallet, replayed) in wallets {
            let s = &replayed.summary;
            owed.shift(None, s.balance);
            let status = if s.closed { "closed" } else { "active" };
            let (events, position) = (int(s.events, "events")?, int(s.last_position, "position")?);
            writer
                .as_mut()
                .write(&[
                    &&**tenant,
                    &&**wallet,
                    &s.customer_ref,
                    &status,
                    &s.balance,
                    &s.lifetime_earned,
                    &s.lifetime_redeemed,
                    &s.lifetime_reversed,
                    &s.lifetime_adjusted,
                    &s.forfeited,
                    &events,
                    &position,
                    &s.enrolled_at_ms.map(timestamp),
                    &timestamp(s.last_activity_ms),
                ])
                .await?;
        }
    }
    writer.finish().await?;
    write_liability(tx, schema, &liability).await
}

impl PostgresReadModel {
    /// Takes what this process holds of `generation` for a batch or the promotion, leaving it in flight.
    fn take(&self, generation: u64) -> Result<Taken, ProjectionError> {
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

    fn put_back(&self, generation: u64, owned: Owned) {
        self.rebuilding.lock().insert(generation, owned);
    }

    /// This process no longer rebuilds `generation`: what it held goes, and so does its lock (the
    /// session that holds it closes).
    fn let_go(&self, generation: u64) {
        self.rebuilding.lock().remove(&generation);
        self.owners.lock().remove(&generation);
    }

    async fn apply_batch(&self, generation: u64, from: u64, through: u64, movements: &[Movement]) -> Result<(), ProjectionError> {
        // A rebuilt generation: what the replay holds is taken out while the batch runs, put back as it
        // was if the batch fails, and with the batch folded in once it has committed.
        let taken = self.take(generation)?;
        let wallets = match &taken {
            Taken::NotOwned | Taken::WrittenOut => Wallets::Upsert,
            Taken::Holding(r) if r.count > self.replay_wallets_max => Wallets::WriteOut(r),
            Taken::Holding(r) => Wallets::Replayed(r),
        };
        let written_out = matches!(wallets, Wallets::WriteOut(_));
        let owned = !matches!(taken, Taken::NotOwned);
        let result = self.write_batch(generation, from, through, movements, wallets, owned).await;
        if let Taken::Holding(mut replaying) = taken {
            match &result {
                Ok(()) if written_out => self.put_back(generation, Owned::WrittenOut),
                Ok(()) => {
                    replaying.record(movements);
                    self.put_back(generation, Owned::Holding(replaying));
                }
                Err(_) => self.put_back(generation, Owned::Holding(replaying)),
            }
        }
        result
    }

    async fn write_batch(
        &self,
        generation: u64,
        from: u64,
        through: u64,
        movements: &[Movement],
        wallets: Wallets<'_>,
        owned: bool,
    ) -> Result<(), ProjectionError> {
        let schema = schema(generation);
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if !owned {
            // Only the live generation is followed: once another node promoted a new one, this batch must
            // not land in the old one (the promotion waits for batches holding this lock).
            let id = i32::try_from(generation).map_err(|_| ProjectionError::NoSuchGeneration { model: NAME, generation })?;
            let live = tx.prepare_cached("SELECT live FROM tally_read_generations WHERE generation = $1 FOR SHARE").await?;
            if !tx.query_opt(&live, &[&id]).await?.is_some_and(|row| row.get::<_, bool>(0)) {
                return Err(ProjectionError::NoSuchGeneration { model: NAME, generation });
            }
        }
        let lock = tx.prepare_cached(&format!("SELECT position FROM {schema}.checkpoint FOR UPDATE")).await?;
        let actual: i64 = tx.query_one(&lock, &[]).await?.get(0);
        if actual != int(from, "position")? {
            return Err(ProjectionError::CheckpointMoved { generation, expected: from, actual: unsigned(actual, "checkpoint")? });
        }
        let known = match wallets {
            Wallets::Upsert => None,
            Wallets::Replayed(replaying) => Some(replaying),
            Wallets::WriteOut(replaying) => {
                write_out(&tx, &schema, replaying).await?;
                Some(replaying)
            }
        };
        if !movements.is_empty() {
            let delta = BatchDelta::of(movements);
            write_ledger(&tx, &schema, movements).await?;
            let liability = match wallets {
                Wallets::Replayed(_) => None,
                Wallets::Upsert | Wallets::WriteOut(_) => Some(write_wallets(&tx, &schema, &delta).await?),
            };
            let mut days: BTreeMap<(String, Date), DayStats> =
                delta.days.iter().map(|((tenant, day), stats)| (((*tenant).to_owned(), date_of_day(*day)), *stats)).collect();
            for key in write_active_days(&tx, &schema, &delta, known).await? {
                days.entry(key).or_default().active_wallets += 1;
            }
            write_days(&tx, &schema, &days).await?;
            if let Some(liability) = liability {
                write_liability(&tx, &schema, &liability).await?;
            }
        }
        let advance = tx.prepare_cached(&format!("UPDATE {schema}.checkpoint SET position = $1, updated_at = now()")).await?;
        tx.execute(&advance, &[&int(through, "position")?]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Makes `generation` live, first writing out what a replay of it holds in memory.
    async fn promote_with(&self, generation: u64, replaying: Option<&Replaying>) -> Result<(), ProjectionError> {
        let mut admin = self.admin().await?;
        let id = i32::try_from(generation).map_err(|_| ProjectionError::NoSuchGeneration { model: NAME, generation })?;
        let tx = admin.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&GENERATIONS_LOCK]).await?;
        let old: Option<i32> = tx.query_opt("SELECT generation FROM tally_read_generations WHERE live", &[]).await?.map(|r| r.get(0));
        if tx.query_opt("SELECT 1 FROM tally_read_generations WHERE generation = $1 AND NOT live", &[&id]).await?.is_none() {
            return Err(ProjectionError::NoSuchGeneration { model: NAME, generation });
        }
        // Waits for the batches in flight on the live generation; none lands there after it.
        tx.execute("UPDATE tally_read_generations SET live = FALSE WHERE live", &[]).await?;
        let checkpoint = |g: i32| format!("SELECT position FROM {}.checkpoint", schema(u64::try_from(g).unwrap_or(0)));
        let new_position: i64 = tx.query_one(&checkpoint(id), &[]).await?.get(0);
        if let Some(old) = old {
            let live_position: i64 = tx.query_one(&checkpoint(old), &[]).await?.get(0);
            if new_position < live_position {
                return Err(ProjectionError::Behind {
                    generation,
                    checkpoint: unsigned(new_position, "checkpoint")?,
                    live: unsigned(live_position, "checkpoint")?,
                });
            }
        }
        if let Some(replaying) = replaying {
            write_out(&tx, &schema(generation), replaying).await?;
        }
        build_deferred_indexes(&tx, generation).await?;
        tx.execute("UPDATE tally_read_generations SET live = TRUE, promoted_at = now() WHERE generation = $1", &[&id]).await?;
        tx.batch_execute(&views_sql(generation)).await?;
        tx.commit().await?;
        // Promoted. Dropping the old generation is housekeeping: if it fails, the next rebuild does it.
        if let Some(old) = old
            && let Err(error) = drop_abandoned(&mut admin, old).await
        {
            tracing::warn!(%error, generation = old, "cannot drop the previous reporting generation; the next rebuild will");
        }
        Ok(())
    }
}

#[async_trait]
impl ReadModel for PostgresReadModel {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn live(&self) -> Result<Generation, ProjectionError> {
        let client = self.pool.get().await?;
        let live: i32 = client
            .query_opt("SELECT generation FROM tally_read_generations WHERE live", &[])
            .await?
            .ok_or_else(|| ProjectionError::Invalid("no live reporting generation; restart to create one".to_owned()))?
            .get(0);
        let id = u64::try_from(live).unwrap_or(0);
        let position: i64 = client.query_one(&format!("SELECT position FROM {}.checkpoint", schema(id)), &[]).await?.get(0);
        Ok(Generation { id, checkpoint: unsigned(position, "checkpoint")? })
    }

    async fn apply(&self, generation: u64, from: u64, through: u64, movements: Arc<[Movement]>) -> Result<(), ProjectionError> {
        self.apply_batch(generation, from, through, &movements).await.map_err(|error| match error {
            ProjectionError::Postgres(e) if missing_generation(&e) => ProjectionError::NoSuchGeneration { model: NAME, generation },
            other => other,
        })
    }

    async fn create_generation(&self) -> Result<u64, ProjectionError> {
        let mut admin = self.admin().await?;
        // Its session holds the rebuild's lock on the new generation for as long as this process owns it.
        let owner = self.admin().await?;
        admin.execute("SELECT pg_advisory_lock($1)", &[&GENERATIONS_LOCK]).await?;
        let result = async {
            let generation = new_generation(&mut admin).await?;
            let id = i32::try_from(generation).map_err(|_| ProjectionError::NoSuchGeneration { model: NAME, generation })?;
            owner.execute("SELECT pg_advisory_lock($1, $2)", &[&REBUILD_LOCK_CLASS, &id]).await?;
            Ok(generation)
        }
        .await;
        let _ = admin.execute("SELECT pg_advisory_unlock($1)", &[&GENERATIONS_LOCK]).await;
        // Empty, and only this process writes it until it is promoted.
        if let Ok(generation) = result {
            self.put_back(generation, Owned::Holding(Replaying::default()));
            self.owners.lock().insert(generation, owner);
        }
        result
    }

    async fn promote(&self, generation: u64) -> Result<(), ProjectionError> {
        // Once live, runners on other nodes may write it too: what the replay holds is written out now,
        // or kept for the next attempt if the promotion fails.
        let taken = self.take(generation)?;
        let holding = match &taken {
            Taken::Holding(replaying) => Some(replaying),
            Taken::NotOwned | Taken::WrittenOut => None,
        };
        let result = self.promote_with(generation, holding).await;
        match (&result, taken) {
            // Behind the live one: the runner catches it up and promotes it again.
            (Err(ProjectionError::Behind { .. }), Taken::Holding(replaying)) => self.put_back(generation, Owned::Holding(replaying)),
            (Err(ProjectionError::Behind { .. }), Taken::WrittenOut) => self.put_back(generation, Owned::WrittenOut),
            // Promoted, or failed in a way that ends the rebuild (a commit whose answer was lost may even
            // have made it live): this process no longer owns it.
            _ => self.let_go(generation),
        }
        result
    }

    async fn drop_generation(&self, generation: u64) -> Result<(), ProjectionError> {
        self.let_go(generation);
        let mut admin = self.admin().await?;
        let id = i32::try_from(generation).map_err(|_| ProjectionError::NoSuchGeneration { model: NAME, generation })?;
        drop_abandoned(&mut admin, id).await
    }
}

/// The first key of the session advisory lock a rebuilding process holds on its generation (the second
/// is the generation): it is released when the process lets go of the generation or its session ends,
/// crash included.
const REBUILD_LOCK_CLASS: i32 = 0x7461_6c6c;

async fn new_generation(admin: &mut tokio_postgres::Client) -> Result<u64, ProjectionError> {
    let others: Vec<i32> =
        admin.query("SELECT generation FROM tally_read_generations WHERE NOT live", &[]).await?.iter().map(|r| r.get(0)).collect();
    for other in others {
        // Held by its rebuilding process while it lives: a rebuild is running (here or on another node).
        let free: bool = admin.query_one("SELECT pg_try_advisory_lock($1, $2)", &[&REBUILD_LOCK_CLASS, &other]).await?.get(0);
        if !free {
            return Err(ProjectionError::RebuildRunning { model: NAME });
        }
        admin.execute("SELECT pg_advisory_unlock($1, $2)", &[&REBUILD_LOCK_CLASS, &other]).await?;
        tracing::info!(generation = other, "dropping a reporting generation left by an interrupted rebuild");
        drop_abandoned(admin, other).await?;
    }
    let next: i32 = admin
        .query_one(
            "INSERT INTO tally_read_generations (generation) VALUES (nextval('tally_read_generation_ids')) RETURNING generation",
            &[],
        )
        .await?
        .get(0);
    let next = u64::try_from(next).unwrap_or(0);
    migrate_generation(admin, next).await?;
    defer_indexes(admin, next).await?;
    Ok(next)
}

/// A new generation is filled by a replay before anyone reads it: its secondary indexes (those no
/// upsert needs) are dropped, and their definitions kept in `deferred_indexes`, so the replay does not
/// maintain them row by row; [`build_deferred_indexes`] builds each once, in bulk, when it is promoted.
async fn defer_indexes(admin: &mut tokio_postgres::Client, generation: u64) -> Result<(), ProjectionError> {
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
async fn build_deferred_indexes(tx: &tokio_postgres::Transaction<'_>, generation: u64) -> Result<(), ProjectionError> {
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

/// Drops a generation that is not live: its row and its schema, together.
async fn drop_abandoned(admin: &mut tokio_postgres::Client, generation: i32) -> Result<(), ProjectionError> {
    let tx = admin.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&GENERATIONS_LOCK]).await?;
    if tx.execute("DELETE FROM tally_read_generations WHERE generation = $1 AND NOT live", &[&generation]).await? > 0 {
        tx.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", schema(u64::try_from(generation).unwrap_or(0)))).await?;
    }
    tx.commit().await?;
    Ok(())
}

//! One batch in one transaction: the checkpoint row is locked and compared first, then the ledger rows
//! go in by binary COPY and the aggregates (wallets, daily figures, active days, liability) by `unnest`
//! upserts of what the batch adds, keyed in a fixed order; then the checkpoint moves.
//!
//! Isolated, a batch's rows are written in a savepoint, and if the database refuses them for their data
//! (a NUL byte, a figure out of range), each half again in a savepoint of its own, down to single
//! movements (bisection): a movement that is refused leaves no row at all (ledger, wallet, daily figures, liability) and goes
//! into `quarantined_events`, with the poison events the batch came with, before the checkpoint moves.

use std::collections::{BTreeMap, BTreeSet};

use futures::pin_mut;
use time::Date;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use super::bulk::{Owned, Replaying, Taken, Wallets, write_out};
use super::wallets::{WalletArrays, WalletColumns, upsert_sql};
use super::{NAME, PostgresReadModel, date_of_day, generation_id, int, schema, timestamp, unsigned};
use crate::ProjectionError;
use crate::model::{DayStats, Liability, WalletSummary, day_of};
use crate::movement::{Movement, MovementKind, storable_text};
use crate::quarantine::QuarantinedEvent;

/// Whether a batch is written whole, or with its refused movements quarantined.
#[derive(Debug, Clone, Copy)]
pub(super) enum Mode<'p> {
    Whole,
    /// Quarantining what is refused, with these poison events.
    Isolated(&'p [QuarantinedEvent]),
}

impl PostgresReadModel {
    /// Applies a batch; returns the events quarantined (none when `mode` is whole: then any error fails
    /// the batch).
    pub(super) async fn apply_batch(
        &self,
        generation: u64,
        from: u64,
        through: u64,
        movements: &[Movement],
        mode: Mode<'_>,
    ) -> Result<Vec<QuarantinedEvent>, ProjectionError> {
        // A rebuilt generation: what the replay holds is taken out while the batch runs, put back as it
        // was if the batch fails, and with the batch folded in once it has committed.
        let taken = self.take(generation)?;
        let wallets = self.wallets_for(&taken);
        let written_out = matches!(wallets, Wallets::WriteOut(_));
        let owned = !matches!(taken, Taken::NotOwned);
        let result = self.write_batch(generation, from, through, movements, wallets, owned, mode).await;
        if let Taken::Holding(mut replaying) = taken {
            match &result {
                Ok(_) if written_out => self.put_back(generation, Owned::WrittenOut),
                Ok(quarantined) if quarantined.is_empty() => {
                    replaying.record(movements);
                    self.put_back(generation, Owned::Holding(replaying));
                }
                Ok(quarantined) => {
                    let skipped: BTreeSet<u64> = quarantined.iter().map(|q| q.position).collect();
                    let applied: Vec<Movement> = movements.iter().filter(|m| !skipped.contains(&m.position)).cloned().collect();
                    replaying.record(&applied);
                    self.put_back(generation, Owned::Holding(replaying));
                }
                Err(_) => self.put_back(generation, Owned::Holding(replaying)),
            }
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_batch(
        &self,
        generation: u64,
        from: u64,
        through: u64,
        movements: &[Movement],
        wallets: Wallets<'_>,
        owned: bool,
        mode: Mode<'_>,
    ) -> Result<Vec<QuarantinedEvent>, ProjectionError> {
        let schema = schema(generation);
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if !owned {
            // Only the live generation is followed: once another node promoted a new one, this batch must
            // not land in the old one (the promotion waits for batches holding this lock).
            let id = generation_id(generation)?;
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
        let rows = match wallets {
            Wallets::Upsert => Rows { upsert_wallets: true, known: None },
            Wallets::Replayed(replaying) => Rows { upsert_wallets: false, known: Some(replaying) },
            Wallets::WriteOut(replaying) => {
                write_out(&tx, &schema, replaying).await?;
                Rows { upsert_wallets: true, known: Some(replaying) }
            }
        };
        let quarantined = match mode {
            Mode::Whole => {
                rows.write(&tx, &schema, movements).await?;
                Vec::new()
            }
            Mode::Isolated(poisoned) => {
                let mut quarantined = poisoned.to_vec();
                quarantined.extend(rows.write_isolated(&tx, &schema, movements).await?);
                quarantined.sort_by_key(|q| q.position);
                write_quarantined(&tx, &schema, &quarantined).await?;
                quarantined
            }
        };
        let advance = tx.prepare_cached(&format!("UPDATE {schema}.checkpoint SET position = $1, updated_at = now()")).await?;
        tx.execute(&advance, &[&int(through, "position")?]).await?;
        tx.commit().await?;
        Ok(quarantined)
    }
}

/// How a batch's movements become rows.
#[derive(Debug, Clone, Copy)]
struct Rows<'r> {
    /// Whether the wallets' rows (and the liability) are upserted; a replay keeps them in memory.
    upsert_wallets: bool,
    /// What a replay knows of its wallets' active days, so certainly new ones go in by COPY.
    known: Option<&'r Replaying>,
}

impl Rows<'_> {
    /// Writes the rows of `movements`, in parts whose sums cannot leave `i64` on the way to the
    /// database (which adds them up as NUMERIC).
    async fn write(self, tx: &deadpool_postgres::Transaction<'_>, schema: &str, movements: &[Movement]) -> Result<(), ProjectionError> {
        let parts = parts_within_i64(movements);
        // What a replay knows holds before the batch only: a second part may repeat an active day.
        let known = if parts.len() == 1 { self.known } else { None };
        for part in parts {
            write_rows(tx, schema, part, self.upsert_wallets, known).await?;
        }
        Ok(())
    }

    /// Writes the rows of `movements` in a savepoint; if the database refuses them for their data, each
    /// half again in a savepoint of its own, down to single movements (so a few bad movements among
    /// many cost a few attempts each, not one per movement). Ranges go in log order. Returns the
    /// movements refused, quarantined.
    async fn write_isolated(
        self,
        tx: &deadpool_postgres::Transaction<'_>,
        schema: &str,
        movements: &[Movement],
    ) -> Result<Vec<QuarantinedEvent>, ProjectionError> {
        let mut quarantined = Vec::new();
        let mut rows = self;
        // Ranges still to write, the next one last.
        let mut ranges = vec![movements];
        while let Some(range) = ranges.pop() {
            if range.is_empty() {
                continue;
            }
            tx.batch_execute("SAVEPOINT isolated").await?;
            match rows.write(tx, schema, range).await {
                Ok(()) => tx.batch_execute("RELEASE SAVEPOINT isolated").await?,
                Err(error) if error.is_data_error() => {
                    tx.batch_execute("ROLLBACK TO SAVEPOINT isolated; RELEASE SAVEPOINT isolated").await?;
                    if let [movement] = range {
                        quarantined.push(QuarantinedEvent::of(movement, error.to_string()));
                    } else {
                        let (first, second) = range.split_at(range.len() / 2);
                        ranges.extend([second, first]);
                    }
                }
                Err(error) => return Err(error),
            }
            // What a replay knows holds before the batch only: a range after another may repeat an
            // active day.
            rows.known = None;
        }
        Ok(quarantined)
    }
}

/// Splits `movements` where the sum of their points' magnitudes would pass `i64::MAX`, so no figure a
/// part adds up in memory can overflow (one movement holds at most `BALANCE_ABS_MAX`). Nearly always
/// one part.
fn parts_within_i64(movements: &[Movement]) -> Vec<&[Movement]> {
    let mut parts = Vec::with_capacity(1);
    let (mut start, mut sum) = (0, 0i128);
    for (i, movement) in movements.iter().enumerate() {
        let points = i128::from(movement.points).abs();
        if sum + points > i128::from(i64::MAX) {
            parts.push(&movements[start..i]);
            (start, sum) = (i, 0);
        }
        sum += points;
    }
    parts.push(&movements[start..]);
    parts
}

/// The rows of `movements`, added to the tables.
async fn write_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    movements: &[Movement],
    upsert_wallets: bool,
    known: Option<&Replaying>,
) -> Result<(), ProjectionError> {
    if movements.is_empty() {
        return Ok(());
    }
    let delta = BatchDelta::of(movements);
    write_ledger(tx, schema, movements).await?;
    let liability = if upsert_wallets { Some(write_wallets(tx, schema, &delta).await?) } else { None };
    let mut days: BTreeMap<(String, Date), DayStats> =
        delta.days.iter().map(|((tenant, day), stats)| (((*tenant).to_owned(), date_of_day(*day)), *stats)).collect();
    for key in write_active_days(tx, schema, &delta, known).await? {
        days.entry(key).or_default().active_wallets += 1;
    }
    write_days(tx, schema, &days).await?;
    if let Some(liability) = liability {
        write_liability(tx, schema, &liability).await?;
    }
    Ok(())
}

/// Records quarantined events (their text made storable).
async fn write_quarantined(
    tx: &deadpool_postgres::Transaction<'_>,
    schema: &str,
    quarantined: &[QuarantinedEvent],
) -> Result<(), ProjectionError> {
    if quarantined.is_empty() {
        return Ok(());
    }
    let mut positions = Vec::with_capacity(quarantined.len());
    for q in quarantined {
        positions.push(int(q.position, "position")?);
    }
    let streams: Vec<String> = quarantined.iter().map(|q| storable_text(&q.stream).into_owned()).collect();
    let types: Vec<String> = quarantined.iter().map(|q| storable_text(&q.event_type).into_owned()).collect();
    let reasons: Vec<String> = quarantined.iter().map(|q| storable_text(&q.reason).into_owned()).collect();
    let sql = format!(
        "INSERT INTO {schema}.quarantined_events (position, stream, event_type, reason)
         SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[]) ON CONFLICT (position) DO NOTHING"
    );
    tx.execute(&sql, &[&positions, &streams, &types, &reasons]).await?;
    Ok(())
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
    let mut arrays = WalletArrays::default();
    for ((tenant, wallet), d) in &delta.wallets {
        arrays.push(WalletColumns::of(tenant, wallet, d)?);
    }
    let statement = tx.prepare_cached(&upsert_sql(schema)).await?;
    let rows = tx.query(&statement, &arrays.params()).await?;
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
    let mut columns: [Vec<i64>; 10] = Default::default();
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
            s.points_transferred,
        ]) {
            column.push(value);
        }
    }
    let sql = format!(
        "INSERT INTO {schema}.program_daily_stats AS d (tenant_id, day, points_issued, points_redeemed, points_reversed,
             points_adjusted, points_forfeited, enrolments, active_wallets, points_purchased, points_expired, points_transferred)
         SELECT * FROM unnest($1::text[], $2::date[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::int8[], $9::int8[],
                              $10::int8[], $11::int8[], $12::int8[])
         ON CONFLICT (tenant_id, day) DO UPDATE SET
             points_issued = d.points_issued + EXCLUDED.points_issued,
             points_redeemed = d.points_redeemed + EXCLUDED.points_redeemed,
             points_reversed = d.points_reversed + EXCLUDED.points_reversed,
             points_adjusted = d.points_adjusted + EXCLUDED.points_adjusted,
             points_forfeited = d.points_forfeited + EXCLUDED.points_forfeited,
             enrolments = d.enrolments + EXCLUDED.enrolments,
             active_wallets = d.active_wallets + EXCLUDED.active_wallets,
             points_purchased = d.points_purchased + EXCLUDED.points_purchased,
             points_expired = d.points_expired + EXCLUDED.points_expired,
             points_transferred = d.points_transferred + EXCLUDED.points_transferred"
    );
    let statement = tx.prepare_cached(&sql).await?;
    let [issued, redeemed, reversed, adjusted, forfeited, enrolments, active, purchased, expired, transferred] = &columns;
    let values: [&(dyn tokio_postgres::types::ToSql + Sync); 12] =
        [&tenants, &dates, issued, redeemed, reversed, adjusted, forfeited, enrolments, active, purchased, expired, transferred];
    tx.execute(&statement, &values).await?;
    Ok(())
}

/// Adds to each tenant's liability.
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

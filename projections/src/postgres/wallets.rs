//! The `wallets` row, written once: its columns, how a [`WalletSummary`] fills them and is read back,
//! and the statements built from them: the per-batch upsert (a batch's deltas as `unnest` arrays, added
//! to the stored rows) and the bulk load's binary COPY.

use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use super::{int, millis, timestamp, unsigned};
use crate::ProjectionError;
use crate::model::WalletSummary;

/// How the upsert merges a batch's delta (`EXCLUDED`) into the stored row (`w`).
#[derive(Debug, Clone, Copy)]
enum Merge {
    /// Part of the primary key.
    Key,
    /// Figures the delta adds to.
    Add,
    /// The delta's value replaces the stored one.
    Latest,
    /// An expression of its own.
    Sql(&'static str),
}

#[derive(Debug)]
struct Column {
    name: &'static str,
    ty: Type,
    merge: Merge,
}

const fn column(name: &'static str, ty: Type, merge: Merge) -> Column {
    Column { name, ty, merge }
}

/// The columns, in the order [`WalletColumns::values`] and [`WalletArrays::params`] give them.
const COLUMNS: [Column; 16] = [
    column("tenant_id", Type::TEXT, Merge::Key),
    column("wallet_id", Type::TEXT, Merge::Key),
    column(
        "customer_ref",
        Type::TEXT,
        Merge::Sql(
            "CASE WHEN EXCLUDED.customer_erased THEN '' WHEN EXCLUDED.enrolled_at IS NULL THEN w.customer_ref ELSE EXCLUDED.customer_ref END",
        ),
    ),
    column("status", Type::TEXT, Merge::Sql("CASE WHEN EXCLUDED.status = 'closed' THEN 'closed' ELSE w.status END")),
    column("balance", Type::INT8, Merge::Add),
    column("lifetime_earned", Type::INT8, Merge::Add),
    column("lifetime_redeemed", Type::INT8, Merge::Add),
    column("lifetime_reversed", Type::INT8, Merge::Add),
    column("lifetime_adjusted", Type::INT8, Merge::Add),
    column("forfeited", Type::INT8, Merge::Add),
    column("events", Type::INT8, Merge::Add),
    column("last_position", Type::INT8, Merge::Latest),
    column("enrolled_at", Type::TIMESTAMPTZ, Merge::Sql("coalesce(EXCLUDED.enrolled_at, w.enrolled_at)")),
    column("last_activity_at", Type::TIMESTAMPTZ, Merge::Latest),
    column("customer_erased", Type::BOOL, Merge::Sql("w.customer_erased OR EXCLUDED.customer_erased")),
    column(
        "customer_sealed",
        Type::BYTEA,
        Merge::Sql(
            "CASE WHEN EXCLUDED.customer_erased THEN '\\x'::bytea WHEN EXCLUDED.enrolled_at IS NULL THEN w.customer_sealed ELSE EXCLUDED.customer_sealed END",
        ),
    ),
];

const CLOSED: &str = "closed";
const ACTIVE: &str = "active";

fn names<'c>(columns: impl IntoIterator<Item = &'c Column>) -> String {
    columns.into_iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
}

/// Adds a batch's deltas to the stored rows (inserting the wallets new to the table); returns each
/// row's tenant, wallet, balance after, and whether it was inserted. Parameters: [`WalletArrays::params`].
pub(super) fn upsert_sql(schema: &str) -> String {
    let arrays: Vec<String> = COLUMNS.iter().enumerate().map(|(i, c)| format!("${}::{}[]", i + 1, c.ty.name())).collect();
    let set: Vec<String> = COLUMNS
        .iter()
        .filter_map(|c| match c.merge {
            Merge::Key => None,
            Merge::Add => Some(format!("{0} = w.{0} + EXCLUDED.{0}", c.name)),
            Merge::Latest => Some(format!("{0} = EXCLUDED.{0}", c.name)),
            Merge::Sql(sql) => Some(format!("{} = {sql}", c.name)),
        })
        .collect();
    format!(
        "INSERT INTO {schema}.wallets AS w ({}) SELECT * FROM unnest({})
         ON CONFLICT (tenant_id, wallet_id) DO UPDATE SET {}
         RETURNING tenant_id, wallet_id, balance, (xmax = 0) AS inserted",
        names(&COLUMNS),
        arrays.join(", "),
        set.join(", ")
    )
}

/// Writes whole rows into a table that holds none of them yet; rows: [`WalletColumns::values`].
pub(super) fn copy_sql(schema: &str) -> String {
    format!("COPY {schema}.wallets ({}) FROM STDIN BINARY", names(&COLUMNS))
}

/// The column types of [`copy_sql`].
pub(super) fn copy_types() -> Vec<Type> {
    COLUMNS.iter().map(|c| c.ty.clone()).collect()
}

/// Reads a tenant's wallets as [`read`] takes them: `SELECT {columns} FROM … WHERE tenant_id = …`.
pub(super) fn select_columns() -> String {
    names(COLUMNS.iter().filter(|c| c.name != "tenant_id"))
}

/// A row selected with [`select_columns`]: the wallet id and its summary.
pub(super) fn read(row: &Row) -> Result<(String, WalletSummary), ProjectionError> {
    let status: &str = row.get("status");
    let enrolled_at: Option<OffsetDateTime> = row.get("enrolled_at");
    let summary = WalletSummary {
        customer_ref: row.get("customer_ref"),
        customer_erased: row.get("customer_erased"),
        customer_sealed: row.get("customer_sealed"),
        closed: status == CLOSED,
        balance: row.get("balance"),
        lifetime_earned: row.get("lifetime_earned"),
        lifetime_redeemed: row.get("lifetime_redeemed"),
        lifetime_reversed: row.get("lifetime_reversed"),
        lifetime_adjusted: row.get("lifetime_adjusted"),
        forfeited: row.get("forfeited"),
        events: unsigned(row.get("events"), "wallets.events")?,
        enrolled_at_ms: enrolled_at.map(millis),
        last_activity_ms: millis(row.get("last_activity_at")),
        last_position: unsigned(row.get("last_position"), "wallets.last_position")?,
    };
    Ok((row.get("wallet_id"), summary))
}

/// One wallet's row (in a batch: the delta it adds to the row), as the columns hold it.
#[derive(Debug)]
pub(super) struct WalletColumns<'a> {
    tenant_id: &'a str,
    wallet_id: &'a str,
    /// `""` until enrolled (a delta without the enrolment leaves the stored one alone).
    customer_ref: &'a str,
    status: &'static str,
    /// `balance` to `last_position`, in [`COLUMNS`] order.
    figures: [i64; 8],
    enrolled_at: Option<OffsetDateTime>,
    last_activity_at: OffsetDateTime,
    customer_erased: bool,
    customer_sealed: &'a [u8],
}

impl<'a> WalletColumns<'a> {
    pub(super) fn of(tenant_id: &'a str, wallet_id: &'a str, s: &'a WalletSummary) -> Result<Self, ProjectionError> {
        Ok(Self {
            tenant_id,
            wallet_id,
            customer_ref: &s.customer_ref,
            status: if s.closed { CLOSED } else { ACTIVE },
            figures: [
                s.balance,
                s.lifetime_earned,
                s.lifetime_redeemed,
                s.lifetime_reversed,
                s.lifetime_adjusted,
                s.forfeited,
                int(s.events, "events")?,
                int(s.last_position, "position")?,
            ],
            enrolled_at: s.enrolled_at_ms.map(timestamp),
            last_activity_at: timestamp(s.last_activity_ms),
            customer_erased: s.customer_erased,
            customer_sealed: &s.customer_sealed,
        })
    }

    /// The row's values in [`COLUMNS`] order, for the COPY.
    pub(super) fn values(&self) -> [&(dyn ToSql + Sync); 16] {
        let [balance, earned, redeemed, reversed, adjusted, forfeited, events, position] = &self.figures;
        [
            &self.tenant_id,
            &self.wallet_id,
            &self.customer_ref,
            &self.status,
            balance,
            earned,
            redeemed,
            reversed,
            adjusted,
            forfeited,
            events,
            position,
            &self.enrolled_at,
            &self.last_activity_at,
            &self.customer_erased,
            &self.customer_sealed,
        ]
    }
}

/// Rows as one array per column, the parameters of [`upsert_sql`].
#[derive(Debug, Default)]
pub(super) struct WalletArrays<'a> {
    tenant_id: Vec<&'a str>,
    wallet_id: Vec<&'a str>,
    customer_ref: Vec<&'a str>,
    status: Vec<&'static str>,
    figures: [Vec<i64>; 8],
    enrolled_at: Vec<Option<OffsetDateTime>>,
    last_activity_at: Vec<OffsetDateTime>,
    customer_erased: Vec<bool>,
    customer_sealed: Vec<&'a [u8]>,
}

impl<'a> WalletArrays<'a> {
    pub(super) fn push(&mut self, row: WalletColumns<'a>) {
        self.tenant_id.push(row.tenant_id);
        self.wallet_id.push(row.wallet_id);
        self.customer_ref.push(row.customer_ref);
        self.status.push(row.status);
        for (column, value) in self.figures.iter_mut().zip(row.figures) {
            column.push(value);
        }
        self.enrolled_at.push(row.enrolled_at);
        self.last_activity_at.push(row.last_activity_at);
        self.customer_erased.push(row.customer_erased);
        self.customer_sealed.push(row.customer_sealed);
    }

    /// The arrays in [`COLUMNS`] order.
    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 16] {
        let [balance, earned, redeemed, reversed, adjusted, forfeited, events, position] = &self.figures;
        [
            &self.tenant_id,
            &self.wallet_id,
            &self.customer_ref,
            &self.status,
            balance,
            earned,
            redeemed,
            reversed,
            adjusted,
            forfeited,
            events,
            position,
            &self.enrolled_at,
            &self.last_activity_at,
            &self.customer_erased,
            &self.customer_sealed,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::{COLUMNS, copy_sql, select_columns, upsert_sql};

    #[test]
    fn statements_name_every_column_once() {
        let upsert = upsert_sql("g");
        assert!(upsert.contains("unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[]"), "{upsert}");
        assert!(upsert.contains("$13::timestamptz[], $14::timestamptz[], $15::bool[], $16::bytea[])"), "{upsert}");
        assert!(upsert.contains("balance = w.balance + EXCLUDED.balance") && upsert.contains("last_position = EXCLUDED.last_position"));
        assert!(!upsert.contains("tenant_id = "), "the key is not updated: {upsert}");
        assert!(copy_sql("g").starts_with("COPY g.wallets (tenant_id, wallet_id, customer_ref, status, balance,"));
        assert_eq!(select_columns().split(", ").count(), COLUMNS.len() - 1);
    }
}

//! The ledger for finance, read straight from the log (`AuditService.ExportLedger`, issue 19): a
//! tenant's points movements between two instants, in log order, with each wallet's opening and closing
//! balance and a reconciliation that must balance — opening liability + issued + purchased − redeemed −
//! reversed ± adjusted − forfeited − expired ± transferred = closing liability (transfers net to zero once
//! each has ended; what is in transit at the end is less). Movements are decoded and classified
//! exactly as the read models do (`movement.rs`, `model::DayStats`), so the figures are ReportingService's.

use std::collections::BTreeMap;
use std::sync::Arc;

use tally_engine::store::EventStore;

use crate::ProjectionError;
use crate::model::DayStats;
use crate::movement::{self, Movement, MovementKind};

/// Events read from the log at a time.
const EXPORT_READ_BATCH_EVENTS: usize = 4096;

/// A tenant's ledger between `from_ms` (inclusive) and `to_ms` (exclusive), read a batch at a time.
#[derive(Debug)]
pub struct LedgerExport<'a> {
    store: &'a dyn EventStore,
    tenant: String,
    from_ms: i64,
    to_ms: i64,
    /// The log's last position when the export began: it reads to there, so its figures are of one
    /// point of the log.
    head: u64,
    next: u64,
    /// Each wallet's (opening, closing) balance.
    balances: BTreeMap<Arc<str>, (i64, i64)>,
    period: DayStats,
    rows: u64,
}

/// The export's closing figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciliation {
    pub as_of_position: u64,
    pub opening_liability: i64,
    /// The period's movements by kind (as ReportingService's daily stats count them).
    pub period: DayStats,
    pub closing_liability: i64,
    pub rows: u64,
    pub wallets: u64,
}

impl Reconciliation {
    /// Whether the books balance: the opening liability and the period's movements make the closing one.
    pub fn balances(&self) -> bool {
        self.opening_liability + self.period.net_points() == self.closing_liability
    }
}

/// Whether a movement moves points (what the ledger lists).
fn moves_points(kind: MovementKind) -> bool {
    matches!(
        kind,
        MovementKind::Earn
            | MovementKind::Redeem
            | MovementKind::Adjust
            | MovementKind::Reverse
            | MovementKind::Close
            | MovementKind::Purchase
            | MovementKind::Expire
            | MovementKind::Transfer
    )
}

impl<'a> LedgerExport<'a> {
    pub fn new(store: &'a dyn EventStore, tenant: &str, from_ms: i64, to_ms: i64) -> Self {
        Self::up_to(store, tenant, from_ms, to_ms, u64::MAX)
    }

    /// [`LedgerExport::new`], reading the log no further than `position`.
    pub fn up_to(store: &'a dyn EventStore, tenant: &str, from_ms: i64, to_ms: i64, position: u64) -> Self {
        let head = (*store.head().borrow()).min(position);
        Self {
            store,
            tenant: tenant.to_owned(),
            from_ms,
            to_ms,
            head,
            next: 1,
            balances: BTreeMap::new(),
            period: DayStats::default(),
            rows: 0,
        }
    }

    /// The next rows of the period, in log order; `None` once the log is read to where it stood when the
    /// export began. A batch may hold no rows (events before the period, or another tenant's).
    pub async fn next_rows(&mut self) -> Result<Option<Vec<Movement>>, ProjectionError> {
        if self.next > self.head {
            return Ok(None);
        }
        let limit = usize::try_from(self.head - self.next + 1).unwrap_or(usize::MAX).min(EXPORT_READ_BATCH_EVENTS);
        let events = self.store.read_all(self.next, limit).await?;
        let Some(last) = events.last() else { return Ok(None) };
        self.next = last.global_position + 1;
        let prefix = format!("{}/wallet/", self.tenant);
        let ours = events.into_iter().filter(|e| e.stream_id.as_str().starts_with(&prefix)).collect();
        let mut rows = Vec::new();
        for movement in movement::decode_batch(ours)? {
            if movement.recorded_at_ms >= self.to_ms {
                continue;
            }
            let balance = self.balances.entry(Arc::clone(&movement.wallet)).or_default();
            if movement.recorded_at_ms < self.from_ms {
                balance.0 += movement.points;
                balance.1 += movement.points;
            } else {
                balance.1 += movement.points;
                self.period.apply(&movement);
                if moves_points(movement.kind) {
                    self.rows += 1;
                    rows.push(movement);
                }
            }
        }
        Ok(Some(rows))
    }

    /// Each wallet's opening and closing balance, by wallet id (wallets with an event by the period's end).
    pub fn balances(&self) -> impl Iterator<Item = (&str, i64, i64)> {
        self.balances.iter().map(|(wallet, (opening, closing))| (&**wallet, *opening, *closing))
    }

    pub fn reconciliation(&self) -> Reconciliation {
        Reconciliation {
            as_of_position: self.head.min(self.next.saturating_sub(1)),
            opening_liability: self.balances.values().map(|b| b.0).sum(),
            period: self.period,
            closing_liability: self.balances.values().map(|b| b.1).sum(),
            rows: self.rows,
            wallets: self.balances.len() as u64,
        }
    }
}

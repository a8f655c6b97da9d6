//! The read models' meaning, as pure folds over movements. Both stores compute their rows with these
//! functions, and tests compare what the stores hold with a [`Fold`] of the whole log.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::movement::{Movement, MovementKind};

const MS_PER_DAY: i64 = 86_400_000;

/// The UTC day of a timestamp, as days since 1970-01-01.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(MS_PER_DAY)
}

/// One wallet's figures. Applied to `Default`, the same type is the delta a batch adds to a stored row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletSummary {
    /// The customer's reference: in clear only for a wallet enrolled before sealing (version 1); for a
    /// sealed one filled in when the row is read (`customers::reveal`); empty once erased.
    pub customer_ref: String,
    pub closed: bool,
    pub balance: i64,
    pub lifetime_earned: i64,
    pub lifetime_redeemed: i64,
    pub lifetime_reversed: i64,
    /// Sum of adjustments, signed.
    pub lifetime_adjusted: i64,
    /// Points forfeited when the wallet was closed.
    pub forfeited: i64,
    /// Events applied (the wallet stream's version once complete).
    pub events: u64,
    /// Set by the enrolment (in a delta: only if the batch holds it).
    pub enrolled_at_ms: Option<i64>,
    /// Time of the wallet's latest event.
    pub last_activity_ms: i64,
    pub last_position: u64,
    /// The customer's personal data was erased (`CustomerErased`); `customer_ref` is empty for good.
    /// After the fields of the first format, so older rows decode with it appended (see
    /// `sled_model::decode_summary`).
    pub customer_erased: bool,
    /// The customer's sealed personal data (`SealedPersonalData`, encoded), as enrolled: kept sealed, and
    /// opened only when a row is read (`customers::reveal`), so destroying the wallet's key erases it from
    /// the read model too. Empty once erased.
    pub customer_sealed: Vec<u8>,
}

impl WalletSummary {
    pub fn apply(&mut self, movement: &Movement) {
        let points = movement.points;
        match movement.kind {
            MovementKind::Enroll => {
                self.customer_ref.clone_from(&movement.customer_ref);
                self.customer_sealed.clone_from(&movement.sealed_customer);
                self.enrolled_at_ms = Some(movement.recorded_at_ms);
            }
            MovementKind::Erase => {
                self.customer_ref = String::new();
                self.customer_sealed = Vec::new();
                self.customer_erased = true;
            }
            MovementKind::Earn => self.lifetime_earned += points,
            MovementKind::Redeem => self.lifetime_redeemed -= points,
            MovementKind::Adjust => self.lifetime_adjusted += points,
            MovementKind::Reverse => self.lifetime_reversed -= points,
            MovementKind::Close => {
                self.closed = true;
                self.forfeited -= points;
            }
            // Purchases and expiries move the balance (and the liability) but are no earnings nor
            // redemptions; ledger_entries keeps them apart by kind.
            MovementKind::Hold
            | MovementKind::Release
            | MovementKind::Purchase
            | MovementKind::Expire
            | MovementKind::Mature
            | MovementKind::Tier
            | MovementKind::Stamp
            | MovementKind::Notice
            | MovementKind::Refused
            | MovementKind::Identifier
            | MovementKind::Referral
            | MovementKind::Transfer => {}
        }
        self.balance += points;
        self.events += 1;
        self.last_activity_ms = movement.recorded_at_ms;
        self.last_position = movement.position;
    }

    /// Adds a batch's delta (a summary folded from `Default`) to this stored row.
    pub fn add(&mut self, delta: &WalletSummary) {
        if delta.enrolled_at_ms.is_some() {
            self.customer_ref.clone_from(&delta.customer_ref);
            self.customer_sealed.clone_from(&delta.customer_sealed);
            self.enrolled_at_ms = delta.enrolled_at_ms;
        }
        if delta.customer_erased {
            self.customer_ref = String::new();
            self.customer_sealed = Vec::new();
            self.customer_erased = true;
        }
        self.closed |= delta.closed;
        self.balance += delta.balance;
        self.lifetime_earned += delta.lifetime_earned;
        self.lifetime_redeemed += delta.lifetime_redeemed;
        self.lifetime_reversed += delta.lifetime_reversed;
        self.lifetime_adjusted += delta.lifetime_adjusted;
        self.forfeited += delta.forfeited;
        self.events += delta.events;
        self.last_activity_ms = delta.last_activity_ms;
        self.last_position = delta.last_position;
    }
}

/// One tenant's activity on one UTC day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayStats {
    pub points_issued: i64,
    pub points_redeemed: i64,
    /// Points actually taken back by refunds.
    pub points_reversed: i64,
    /// Net of adjustments, signed.
    pub points_adjusted: i64,
    pub points_forfeited: i64,
    /// Points bought with credit packages.
    pub points_purchased: i64,
    /// Points that expired.
    pub points_expired: i64,
    /// Net of transfers between the tenant's wallets: what was in transit (out of one wallet, not yet in
    /// the other nor back) at the start less what is in transit at the end — 0 when nothing is in transit
    /// at either; a transfer that crosses midnight is −N one day and +N the next.
    #[serde(default)]
    pub points_transferred: i64,
    pub enrolments: i64,
    /// Wallets with at least one event that day.
    pub active_wallets: i64,
}

impl DayStats {
    /// Adds the movement's points; `active_wallets` is counted by the caller, who knows which wallets
    /// were already active that day.
    pub fn apply(&mut self, movement: &Movement) {
        let points = movement.points;
        match movement.kind {
            MovementKind::Enroll => self.enrolments += 1,
            MovementKind::Earn => self.points_issued += points,
            MovementKind::Redeem => self.points_redeemed -= points,
            MovementKind::Adjust => self.points_adjusted += points,
            MovementKind::Reverse => self.points_reversed -= points,
            MovementKind::Close => self.points_forfeited -= points,
            MovementKind::Purchase => self.points_purchased += points,
            MovementKind::Expire => self.points_expired -= points,
            MovementKind::Transfer => self.points_transferred += points,
            MovementKind::Hold
            | MovementKind::Release
            | MovementKind::Mature
            | MovementKind::Tier
            | MovementKind::Stamp
            | MovementKind::Notice
            | MovementKind::Erase
            | MovementKind::Identifier
            | MovementKind::Referral
            | MovementKind::Refused => {}
        }
    }

    pub fn add(&mut self, other: &DayStats) {
        self.points_issued += other.points_issued;
        self.points_redeemed += other.points_redeemed;
        self.points_reversed += other.points_reversed;
        self.points_adjusted += other.points_adjusted;
        self.points_forfeited += other.points_forfeited;
        self.points_purchased += other.points_purchased;
        self.points_transferred += other.points_transferred;
        self.points_expired += other.points_expired;
        self.enrolments += other.enrolments;
        self.active_wallets += other.active_wallets;
    }

    /// The net change of all balances these figures describe.
    pub fn net_points(&self) -> i64 {
        self.points_issued + self.points_purchased - self.points_redeemed - self.points_reversed + self.points_adjusted
            - self.points_forfeited
            - self.points_expired
            + self.points_transferred
    }
}

/// Points a tenant owes its customers: what finance reports as the program's liability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liability {
    /// Sum of positive balances.
    pub outstanding_points: i64,
    /// Sum of negative balances (refunds of spent points under ALLOW_NEGATIVE), as a negative number.
    pub negative_points: i64,
    pub wallets: i64,
}

impl Liability {
    /// Accounts for one wallet's balance moving from `before` to `after`.
    pub fn shift(&mut self, before: Option<i64>, after: i64) {
        let before_value = before.unwrap_or(0);
        self.outstanding_points += after.max(0) - before_value.max(0);
        self.negative_points += after.min(0) - before_value.min(0);
        self.wallets += i64::from(before.is_none());
    }
}

/// Every read model computed in memory from a sequence of movements: the reference the stores are
/// tested against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fold {
    pub position: u64,
    pub wallets: BTreeMap<(String, String), WalletSummary>,
    /// Every movement but enrolments, in log order.
    pub ledger: Vec<Movement>,
    pub days: BTreeMap<(String, i64), DayStats>,
    pub liability: BTreeMap<String, Liability>,
    active: BTreeSet<(String, i64, String)>,
}

impl Fold {
    pub fn apply(&mut self, movement: &Movement) {
        let (tenant, wallet) = (movement.tenant.to_string(), movement.wallet.to_string());
        let day = day_of(movement.recorded_at_ms);
        let stats = self.days.entry((tenant.clone(), day)).or_default();
        stats.apply(movement);
        if self.active.insert((tenant.clone(), day, wallet.clone())) {
            stats.active_wallets += 1;
        }
        let row = self.wallets.entry((tenant.clone(), wallet)).or_default();
        let before = (row.events > 0).then_some(row.balance);
        row.apply(movement);
        self.liability.entry(tenant).or_default().shift(before, row.balance);
        if movement.kind != MovementKind::Enroll {
            self.ledger.push(movement.clone());
        }
        self.position = movement.position;
    }

    /// Distinct wallets active in a tenant between two days (inclusive).
    pub fn active_between(&self, tenant: &str, from_day: i64, to_day: i64) -> usize {
        self.active
            .iter()
            .filter(|(t, day, _)| t == tenant && (from_day..=to_day).contains(day))
            .map(|(_, _, wallet)| wallet)
            .collect::<BTreeSet<_>>()
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn movement(position: u64, wallet: &str, day: i64, kind: MovementKind, points: i64) -> Movement {
        Movement {
            position,
            stream_version: position,
            tenant: Arc::from("acme"),
            wallet: Arc::from(wallet),
            recorded_at_ms: day * MS_PER_DAY + 1_000,
            kind,
            event_type: "tally.v1.Test",
            points,
            reason: String::new(),
            reference: format!("ref-{position}"),
            idempotency_key: format!("k-{position}"),
            principal: String::new(),
            lots: Vec::new(),
            expires_at_ms: None,
            customer_ref: String::new(),
            sealed_customer: Vec::new(),
        }
    }

    /// Worked by hand, so the folds' meaning is checked by something other than themselves.
    #[test]
    fn a_small_history_worked_by_hand() {
        let mut fold = Fold::default();
        for m in [
            movement(1, "a", 10, MovementKind::Enroll, 0),
            movement(2, "a", 10, MovementKind::Earn, 100),
            movement(3, "b", 10, MovementKind::Enroll, 0),
            movement(4, "a", 11, MovementKind::Redeem, -30),
            movement(5, "b", 11, MovementKind::Earn, 20),
            movement(6, "b", 11, MovementKind::Redeem, -20),
            movement(7, "b", 11, MovementKind::Reverse, -20), // refund after spending: b goes to -20
            movement(8, "a", 11, MovementKind::Adjust, -5),
            movement(9, "a", 12, MovementKind::Close, -65),
        ] {
            fold.apply(&m);
        }
        let a = &fold.wallets[&("acme".to_owned(), "a".to_owned())];
        assert_eq!(
            (a.balance, a.lifetime_earned, a.lifetime_redeemed, a.lifetime_adjusted, a.forfeited, a.closed),
            (0, 100, 30, -5, 65, true)
        );
        let b = &fold.wallets[&("acme".to_owned(), "b".to_owned())];
        assert_eq!((b.balance, b.lifetime_reversed, b.events), (-20, 20, 4));
        let day = |d: i64| fold.days[&("acme".to_owned(), d)];
        assert_eq!(day(10), DayStats { points_issued: 100, enrolments: 2, active_wallets: 2, ..DayStats::default() });
        assert_eq!(
            day(11),
            DayStats {
                points_issued: 20,
                points_redeemed: 50,
                points_reversed: 20,
                points_adjusted: -5,
                active_wallets: 2,
                ..DayStats::default()
            }
        );
        assert_eq!(day(12), DayStats { points_forfeited: 65, active_wallets: 1, ..DayStats::default() });
        assert_eq!(fold.liability["acme"], Liability { outstanding_points: 0, negative_points: -20, wallets: 2 });
        assert_eq!(fold.ledger.len(), 7, "enrolments are not ledger entries");
        assert_eq!(fold.active_between("acme", 10, 12), 2);
        assert_eq!(day_of(-1), -1, "before 1970 is the day before, not day 0");
    }
}

//! The wallet aggregate's state: a fold of its events, nothing more.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};

use crate::FastMap;

/// Serializes a map in key order, so equal states always encode to equal bytes (snapshots compare
/// byte for byte).
fn sorted<S: Serializer, V: Serialize>(map: &FastMap<String, V>, serializer: S) -> Result<S::Ok, S::Error> {
    map.iter().collect::<BTreeMap<_, _>>().serialize(serializer)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WalletStatus {
    /// No `WalletEnrolled` yet: the wallet does not exist.
    #[default]
    NotEnrolled,
    Active,
    Closed,
}

/// What one source (an order) earned in this wallet and how much of it was reversed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SourceLedger {
    pub earned: i64,
    /// Points refunds asked to take back (including any shortfall the policy could not take).
    pub reversed: i64,
    /// The order's total in minor units, if the source is an order earned with `EarnForOrder`.
    pub order_minor: Option<i64>,
    /// How much of that total was refunded so far.
    pub refunded_minor: i64,
}

impl SourceLedger {
    pub fn reversible(&self) -> i64 {
        self.earned - self.reversed
    }
}

/// Points one capped rule gave this customer in its cap's recent periods.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RuleUsage {
    /// The cap's period (`tally.v1.CapPeriod`); a rule whose cap changes period starts counting anew.
    pub period: i32,
    /// `(period key, points)`, oldest first, at most `RULE_USAGE_PERIODS_MAX`.
    pub points: Vec<(i64, i64)>,
}

impl RuleUsage {
    pub fn points_in(&self, period: i32, key: i64) -> i64 {
        if self.period != period {
            return 0;
        }
        self.points.iter().find(|(k, _)| *k == key).map_or(0, |(_, points)| *points)
    }
}

/// An open POS hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Hold {
    pub points: i64,
    pub reward_ref: String,
    pub expires_at_ms: i64,
}

/// The recorded outcome of an accepted command, found again by its idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub command_fingerprint: u64,
    /// Stream versions of the first and last event the command produced.
    pub first_version: u64,
    pub last_version: u64,
    /// The balance right after the command.
    pub balance_after: i64,
}

/// Serializable for snapshots (the `tally-snapshots` crate owns the format and its version).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WalletState {
    pub status: WalletStatus,
    pub customer_ref: String,
    /// Available points; may be negative under the ALLOW_NEGATIVE return policy.
    pub balance: i64,
    pub lifetime_earned: i64,
    pub lifetime_redeemed: i64,
    pub lifetime_reversed: i64,
    /// Sum of all adjustments, signed.
    pub lifetime_adjusted: i64,
    /// Points bought with credit packages (not in `lifetime_earned`).
    pub lifetime_purchased: i64,
    pub enrolled_at_ms: i64,
    pub last_activity_ms: i64,
    /// Number of events applied: the stream version this state reflects.
    pub version: u64,
    /// Orders earned with `EarnForOrder` (for first-order and n-th-order rules).
    pub orders_placed: u64,
    /// Points held by open holds (expired ones included until they are released).
    pub held_points: i64,
    /// Open POS holds by hold id.
    #[serde(serialize_with = "sorted")]
    pub(crate) holds: FastMap<String, Hold>,
    #[serde(serialize_with = "sorted")]
    pub(crate) sources: FastMap<String, SourceLedger>,
    /// Per rule id, for rules with a per-customer cap.
    #[serde(serialize_with = "sorted")]
    pub(crate) rule_usage: FastMap<String, RuleUsage>,
    #[serde(serialize_with = "sorted")]
    pub(crate) receipts: FastMap<String, Receipt>,
}

impl WalletState {
    pub fn source(&self, source_ref: &str) -> Option<&SourceLedger> {
        self.sources.get(source_ref)
    }

    pub fn receipt(&self, idempotency_key: &str) -> Option<&Receipt> {
        self.receipts.get(idempotency_key)
    }

    /// Points `rule_id` gave this wallet in the cap period `(period, key)`.
    pub fn rule_points(&self, rule_id: &str, period: i32, key: i64) -> i64 {
        self.rule_usage.get(rule_id).map_or(0, |usage| usage.points_in(period, key))
    }

    pub fn hold(&self, hold_id: &str) -> Option<&Hold> {
        self.holds.get(hold_id)
    }

    /// Open holds, in no particular order.
    pub fn holds(&self) -> impl Iterator<Item = (&str, &Hold)> {
        self.holds.iter().map(|(id, hold)| (id.as_str(), hold))
    }

    /// Points that can be spent at `now_ms`: the balance less the holds still in force.
    pub fn available_at(&self, now_ms: i64) -> i64 {
        let held: i64 = self.holds.values().filter(|h| h.expires_at_ms > now_ms).map(|h| h.points).sum();
        self.balance - held
    }

    /// Number of accepted commands remembered for idempotency.
    pub fn receipt_count(&self) -> usize {
        self.receipts.len()
    }
}

//! The wallet aggregate's state: a fold of its events, nothing more.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};

use crate::FastMap;
use crate::domain::CommandFingerprint;

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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SourceLedger {
    pub earned: i64,
    /// Points refunds asked to take back (including any shortfall the policy could not take).
    pub reversed: i64,
    /// The order's total in minor units, if the source is an order earned with `EarnForOrder`.
    pub order_minor: Option<i64>,
    /// How much of that total was refunded so far.
    pub refunded_minor: i64,
    /// The lots its points went into: a reversal takes from these first.
    pub lots: Vec<u64>,
    /// The month its points qualified in for tiers; a reversal takes them back from there.
    pub qualifying_month: Option<i64>,
    /// Until when its points can be taken back; the wallet forgets the source after it. 0: kept for good.
    pub refundable_until_ms: i64,
}

impl SourceLedger {
    pub fn reversible(&self) -> i64 {
        self.earned - self.reversed
    }

    /// Whether its points can still be taken back at `now_ms` (after that the wallet forgets it).
    pub fn refundable_at(&self, now_ms: i64) -> bool {
        self.refundable_until_ms == 0 || self.refundable_until_ms >= now_ms
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
    /// `(lot, points)`: where the held points came from, soonest expiry first.
    pub lots: Vec<(u64, i64)>,
}

/// Points credited together that expire together (see `tally.v1.LotOpened`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Lot {
    /// Points in the lot that are not held.
    pub points: i64,
    /// Points of the lot set aside by open holds.
    pub held: i64,
    /// `None`: never.
    pub expires_at_ms: Option<i64>,
    /// When the customer is to be told it expires soon; `None` once told, or if never.
    pub notify_at_ms: Option<i64>,
    /// No date: it expires when the wallet has been inactive too long.
    pub on_inactivity: bool,
}

/// Points credited for an order that wait out the program's pending period.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Pending {
    pub points: i64,
    pub source_ref: String,
    pub available_at_ms: i64,
    /// The expiry their lot gets; `None`: never.
    pub expires_at_ms: Option<i64>,
}

/// Stamps on one of the program's stamp cards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StampCard {
    /// On the current card.
    pub stamps: i64,
    /// Cards filled so far.
    pub completed: i64,
}

/// The customer's tier.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TierState {
    pub tier_id: String,
    /// When it is reviewed next (a downgrade can only happen then); 0: never.
    pub next_review_at_ms: i64,
}

impl Lot {
    /// The order lots are spent in: soonest expiry first, never-expiring last, then oldest first.
    pub fn spending_order(&self, id: u64) -> (i64, u64) {
        let undated = if self.on_inactivity { i64::MAX - 1 } else { i64::MAX };
        (self.expires_at_ms.unwrap_or(undated), id)
    }
}

/// The recorded outcome of an accepted command, found again by its idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The fingerprint its first event recorded: a digest, or an old event's FNV-1a.
    pub command_fingerprint: CommandFingerprint,
    /// Stream versions of the first and last event the command produced.
    pub first_version: u64,
    pub last_version: u64,
    /// The balance right after the command.
    pub balance_after: i64,
    /// When the command was decided: the receipt is forgotten `RECEIPT_RETENTION_MS` after it.
    pub recorded_at_ms: i64,
}

/// Serializable for snapshots (the `tally-snapshots` crate owns the format and its version).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WalletState {
    pub status: WalletStatus,
    /// The customer's reference in clear: only from a version 1 enrolment (`WalletEnrolled`, written
    /// before personal data was sealed); empty otherwise.
    pub customer_ref: String,
    /// The customer's `SealedPersonalData` (encoded) from a version 2 enrolment; what it holds reads only
    /// with the wallet's key (`crate::personal`). Empty if none.
    pub customer_sealed: Vec<u8>,
    /// The customer's personal data was erased (`CustomerErased`).
    pub customer_erased: bool,
    /// Available points; may be negative under the ALLOW_NEGATIVE return policy.
    pub balance: i64,
    pub lifetime_earned: i64,
    pub lifetime_redeemed: i64,
    pub lifetime_reversed: i64,
    /// Sum of all adjustments, signed.
    pub lifetime_adjusted: i64,
    /// Points bought with credit packages (not in `lifetime_earned`).
    pub lifetime_purchased: i64,
    /// Points that expired.
    pub lifetime_expired: i64,
    /// Points owed: a reversal took more than the lots held (ALLOW_NEGATIVE). Credits pay it back first.
    /// `balance == Σ lot.points + Σ lot.held + pending_points - debt`.
    pub debt: i64,
    /// Points not spendable yet (in `balance`).
    pub pending_points: i64,
    /// Under an inactivity policy: when lots `on_inactivity` expire unless the customer acts first.
    pub inactivity_expires_at_ms: Option<i64>,
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
    /// Open lots by id (the stream version of the event that opened them).
    pub(crate) lots: BTreeMap<u64, Lot>,
    /// Pending credits by the stream version of the `PointsEarned` that made them.
    pub(crate) pending: BTreeMap<u64, Pending>,
    /// `(month, points)` earned less refunds, oldest first, the last `QUALIFYING_MONTHS_MAX` months.
    pub(crate) qualifying: Vec<(i64, i64)>,
    /// `None`: no tier.
    pub tier: Option<TierState>,
    /// Stamp cards by card id.
    pub(crate) stamp_cards: BTreeMap<String, StampCard>,
    #[serde(serialize_with = "sorted")]
    pub(crate) sources: FastMap<String, SourceLedger>,
    /// Per rule id, for rules with a per-customer cap.
    #[serde(serialize_with = "sorted")]
    pub(crate) rule_usage: FastMap<String, RuleUsage>,
    #[serde(serialize_with = "sorted")]
    pub(crate) receipts: FastMap<String, Receipt>,
    /// The recorded time receipts and sources past their time were last forgotten at.
    pub(crate) swept_at_ms: i64,
    /// Catalogue rewards redeemed, by reward id (for per-customer limits).
    pub(crate) rewards_redeemed: BTreeMap<String, i64>,
    /// Recent catalogue redemptions by redemption id, for their cancellation (forgotten
    /// `CATALOGUE_REDEMPTION_MEMORY_MS` after them).
    pub(crate) catalogue_redemptions: BTreeMap<String, CatalogueRedemption>,
    /// Transfers out of this wallet in the last 24 hours of recorded time, by transfer id: when, and how
    /// many points (for the program's daily cap; a transfer given back leaves).
    pub(crate) transfers_out: BTreeMap<String, (i64, i64)>,
    /// Identifiers the wallet can be found by: kind (`IdentifierKind` as a number) by lookup hash.
    pub(crate) identifiers: BTreeMap<String, i32>,
    /// The wallet whose referral code the customer enrolled with (empty: none).
    pub referred_by: String,
    /// The referral was converted by the customer's first qualifying order (`ReferralConverted`).
    pub referral_converted: bool,
    /// Orders that count for the referral, waiting out the pending period: when each converts it and the
    /// order's currency, by order id (`PointsEarned.referral_converts_at_ms`; emptied when the referral
    /// converts). Their sources are kept until then, past any refund window.
    pub(crate) referral_due: BTreeMap<String, (i64, String)>,
    /// Rewards this wallet was given as a referrer (for the program's cap).
    pub referrals_rewarded: i64,
}

/// What a catalogue redemption took, as its cancellation gives it back.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CatalogueRedemption {
    pub reward_id: String,
    pub points: i64,
    /// Its points by the kind of lot they came from: `(points, expiry, expiring with the wallet's
    /// inactivity)` — earned points with a date, earned points on inactivity, and points that never expire
    /// (purchased ones, or earned under no expiry), each given back into a lot of its own kind.
    pub parts: Vec<(i64, Option<i64>, bool)>,
    pub redeemed_at_ms: i64,
    pub cancelled: bool,
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

    /// A recent catalogue redemption of this wallet's.
    pub fn catalogue_redemption(&self, redemption_id: &str) -> Option<&CatalogueRedemption> {
        self.catalogue_redemptions.get(redemption_id)
    }

    /// Points moved out of this wallet by transfers in the 24 hours before `now_ms` (those given back
    /// not counted).
    pub fn transferred_out_since(&self, now_ms: i64) -> i64 {
        let from = now_ms.saturating_sub(crate::limits::TRANSFER_DAY_MS);
        self.transfers_out.values().filter(|(at, _)| *at > from).map(|(_, points)| points).sum()
    }

    /// Orders waiting out their pending period to convert the referral: `(order id, when)`.
    pub fn referral_due(&self) -> impl Iterator<Item = (&str, i64)> {
        self.referral_due.iter().map(|(order_id, (at, _))| (order_id.as_str(), *at))
    }

    /// The identifiers the wallet can be found by: `(lookup, kind)`, in lookup order.
    pub fn identifiers(&self) -> impl Iterator<Item = (&str, i32)> {
        self.identifiers.iter().map(|(lookup, kind)| (lookup.as_str(), *kind))
    }

    /// How often the wallet redeemed catalogue reward `reward_id`.
    pub fn rewards_redeemed(&self, reward_id: &str) -> i64 {
        self.rewards_redeemed.get(reward_id).copied().unwrap_or(0)
    }

    pub fn hold(&self, hold_id: &str) -> Option<&Hold> {
        self.holds.get(hold_id)
    }

    /// Open holds, in no particular order.
    pub fn holds(&self) -> impl Iterator<Item = (&str, &Hold)> {
        self.holds.iter().map(|(id, hold)| (id.as_str(), hold))
    }

    /// Points that can be spent at `now_ms`: the balance less the holds still in force and the points
    /// of lots whose expiry has passed (not yet recorded as expired).
    pub fn available_at(&self, now_ms: i64) -> i64 {
        let held: i64 = self.holds.values().filter(|h| h.expires_at_ms > now_ms).map(|h| h.points).sum();
        let expired_held = |id: u64| -> i64 {
            let returned = self.holds.values().filter(|h| h.expires_at_ms <= now_ms).flat_map(|h| &h.lots);
            returned.filter(|(lot, _)| *lot == id).map(|(_, points)| points).sum()
        };
        let expired: i64 =
            self.expired_lots(now_ms).map(|(id, lot)| lot.points + if self.holds.is_empty() { 0 } else { expired_held(id) }).sum();
        // Pending points due by now are available, unless their lot has expired too.
        let pending: i64 = self
            .pending
            .values()
            .filter(|p| p.available_at_ms > now_ms || p.expires_at_ms.is_some_and(|at| at <= now_ms))
            .map(|p| p.points)
            .sum();
        self.balance - held - expired - pending
    }

    /// Qualifying points earned in months `first..=last`.
    pub fn qualifying_in(&self, first: i64, last: i64) -> i64 {
        self.qualifying.iter().filter(|(month, _)| (first..=last).contains(month)).map(|(_, points)| points).sum()
    }

    /// Stamp cards with stamps or completions, by card id.
    pub fn stamp_cards(&self) -> impl Iterator<Item = (&str, &StampCard)> {
        self.stamp_cards.iter().map(|(id, card)| (id.as_str(), card))
    }

    /// Pending credits by the stream version that made them.
    pub fn pending(&self) -> impl Iterator<Item = (u64, &Pending)> {
        self.pending.iter().map(|(id, p)| (*id, p))
    }

    /// Lots whose expiry is at or before `now_ms`: their own date, or the wallet's inactivity deadline.
    pub(crate) fn expired_lots(&self, now_ms: i64) -> impl Iterator<Item = (u64, &Lot)> {
        self.lots.iter().filter(move |(_, lot)| self.lot_expiry(lot).is_some_and(|at| at <= now_ms)).map(|(id, lot)| (*id, lot))
    }

    /// When `lot` expires: its own date, or the wallet's inactivity deadline.
    pub fn lot_expiry(&self, lot: &Lot) -> Option<i64> {
        if lot.on_inactivity { self.inactivity_expires_at_ms } else { lot.expires_at_ms }
    }

    /// Open lots by id.
    pub fn lots(&self) -> impl Iterator<Item = (u64, &Lot)> {
        self.lots.iter().map(|(id, lot)| (*id, lot))
    }

    /// The next instant something happens to this wallet by itself: a hold times out, pending points
    /// mature or a lot expires.
    pub fn next_due_ms(&self) -> Option<i64> {
        // A closed wallet keeps its history, and nothing more happens to it.
        if self.status != WalletStatus::Active {
            return None;
        }
        let holds = self.holds.values().map(|h| h.expires_at_ms);
        let pending = self.pending.values().map(|p| p.available_at_ms);
        let lots = self.lots.values().filter(|lot| lot.points > 0).filter_map(|lot| self.lot_expiry(lot));
        let notices = self.lots.values().filter(|lot| lot.points + lot.held > 0).filter_map(|lot| lot.notify_at_ms);
        let lots = lots.chain(notices);
        let review = self.tier.as_ref().map(|t| t.next_review_at_ms).filter(|at| *at != 0);
        let referral = self.referral_due.values().map(|(at, _)| *at);
        holds.chain(pending).chain(lots).chain(review).chain(referral).min()
    }

    /// `(when, points)` of the soonest expiries after `now_ms`, held and pending points included, at most
    /// `n`.
    pub fn upcoming_expiries(&self, now_ms: i64, n: usize) -> Vec<(i64, i64)> {
        let mut expiring: BTreeMap<i64, i64> = BTreeMap::new();
        let lots = self.lots.values().filter_map(|lot| Some((self.lot_expiry(lot)?, lot.points + lot.held)));
        let pending = self.pending.values().filter_map(|p| Some((p.expires_at_ms?, p.points)));
        for (at, points) in lots.chain(pending).filter(|(at, points)| *at > now_ms && *points > 0) {
            *expiring.entry(at).or_default() += points;
        }
        expiring.into_iter().take(n).collect()
    }

    /// Number of accepted commands remembered for idempotency.
    pub fn receipt_count(&self) -> usize {
        self.receipts.len()
    }

    /// Number of sources (orders, earns) remembered for refunds and reversals.
    pub fn source_count(&self) -> usize {
        self.sources.len()
    }
}

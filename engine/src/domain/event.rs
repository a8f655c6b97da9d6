//! Wallet events as the domain sees them: the persisted payload plus the command facts every event
//! carries (idempotency key, fingerprint, decision time). The payload types are the `tally.v1` protobuf
//! messages themselves, so the persisted schema and the domain cannot drift apart.

use tally_proto::v1::{
    EarnReversed, HoldCaptured, HoldReleased, PointsAdjusted, PointsEarned, PointsExpired, PointsExpiringSoon, PointsHeld, PointsMatured,
    PointsPurchased, PointsRedeemed, StampCardCompleted, StampsAdded, TierChanged, TierReviewed, WalletClosed, WalletEnrolled,
};

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Key of the command that produced this event.
    pub idempotency_key: String,
    /// [`super::Command::fingerprint`] of that command.
    pub command_fingerprint: u64,
    /// When the command was decided, in milliseconds since the Unix epoch.
    pub recorded_at_ms: i64,
    pub change: Change,
}

/// What happened to the wallet.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Enrolled(WalletEnrolled),
    Earned(PointsEarned),
    Redeemed(PointsRedeemed),
    Adjusted(PointsAdjusted),
    Reversed(EarnReversed),
    Closed(WalletClosed),
    /// Points set aside for a POS redemption: the balance is unchanged, the available points drop.
    Held(PointsHeld),
    /// A hold spent: its points leave the wallet.
    Captured(HoldCaptured),
    /// A hold ended unspent.
    Released(HoldReleased),
    /// Points bought with a credit package.
    Purchased(PointsPurchased),
    /// What was left of a lot expired.
    Expired(PointsExpired),
    /// Pending points became available.
    Matured(PointsMatured),
    /// The customer moved to another tier.
    TierChanged(TierChanged),
    /// A review kept the tier.
    TierReviewed(TierReviewed),
    /// A lot's points expire soon: the customer is to be told.
    ExpiringSoon(PointsExpiringSoon),
    /// Stamps given by hand.
    Stamped(StampsAdded),
    /// A stamp card filled up; its reward points are credited.
    CardCompleted(StampCardCompleted),
}

impl Change {
    /// The signed effect of this change on the balance. The balance is always the sum of these.
    pub fn points_delta(&self) -> i64 {
        match self {
            Change::Enrolled(_) => 0,
            Change::Earned(e) => e.points,
            // Saturating: a forged log must not panic a reader (the projections reject such amounts).
            Change::Redeemed(e) => e.points.saturating_neg(),
            Change::Adjusted(e) => e.points,
            Change::Reversed(e) => e.reversed_points.saturating_neg(),
            Change::Closed(e) => e.forfeited_points.saturating_neg(),
            Change::Held(_) | Change::Released(_) => 0,
            Change::Captured(e) => e.points.saturating_neg(),
            Change::Purchased(e) => e.points,
            Change::Expired(e) => e.points.saturating_neg(),
            Change::Matured(_) | Change::TierChanged(_) | Change::TierReviewed(_) | Change::Stamped(_) | Change::ExpiringSoon(_) => 0,
            Change::CardCompleted(e) => e.reward_points,
        }
    }

    /// Fully qualified protobuf name of the payload, as stored in the envelope's `event_type`.
    pub fn event_type(&self) -> &'static str {
        match self {
            Change::Enrolled(_) => "tally.v1.WalletEnrolled",
            Change::Earned(_) => "tally.v1.PointsEarned",
            Change::Redeemed(_) => "tally.v1.PointsRedeemed",
            Change::Adjusted(_) => "tally.v1.PointsAdjusted",
            Change::Reversed(_) => "tally.v1.EarnReversed",
            Change::Closed(_) => "tally.v1.WalletClosed",
            Change::Held(_) => "tally.v1.PointsHeld",
            Change::Captured(_) => "tally.v1.HoldCaptured",
            Change::Released(_) => "tally.v1.HoldReleased",
            Change::Purchased(_) => "tally.v1.PointsPurchased",
            Change::Expired(_) => "tally.v1.PointsExpired",
            Change::Matured(_) => "tally.v1.PointsMatured",
            Change::TierChanged(_) => "tally.v1.TierChanged",
            Change::TierReviewed(_) => "tally.v1.TierReviewed",
            Change::Stamped(_) => "tally.v1.StampsAdded",
            Change::ExpiringSoon(_) => "tally.v1.PointsExpiringSoon",
            Change::CardCompleted(_) => "tally.v1.StampCardCompleted",
        }
    }
}

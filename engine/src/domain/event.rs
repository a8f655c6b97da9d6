//! Wallet events as the domain sees them: the persisted payload plus the command facts every event
//! carries (idempotency key, fingerprint, decision time). The payload types are the `tally.v1` protobuf
//! messages themselves, so the persisted schema and the domain cannot drift apart.

use tally_proto::v1::{
    CustomerErased, EarnReversed, HoldCaptured, HoldReleased, IdentifierAttached, IdentifierDetached, PointsAdjusted, PointsEarned,
    PointsExpired, PointsExpiringSoon, PointsHeld, PointsMatured, PointsPurchased, PointsRedeemed, PointsTransferRefused,
    PointsTransferReturned, PointsTransferredIn, PointsTransferredOut, ReferralConverted, ReferralLapsed, ReferralRecorded,
    ReferralRewarded, RewardRedemptionCancelled, RewardRedemptionRefused, StampCardCompleted, StampsAdded, TierChanged, TierReviewed,
    WalletClosed, WalletEnrolledV2,
};

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Key of the command that produced this event.
    pub idempotency_key: String,
    /// [`super::Command::fingerprint`] of that command (an event written before the digest: its FNV-1a).
    pub command_fingerprint: super::CommandFingerprint,
    /// When the command was decided, in milliseconds since the Unix epoch.
    pub recorded_at_ms: i64,
    pub change: Change,
}

/// A table of events: each kind's variant and its `tally.v1` payload message. The persisted type name
/// (`tally.v1.<Message>`), the encoding and the decoding of every kind come from this one list, so a new
/// kind is one line here (plus what it means: `decide`, `apply`, the wire and the read models).
macro_rules! event_table {
    ($(#[$enum_doc:meta])* $name:ident { $( $(#[$doc:meta])* $variant:ident($message:ident), )* }) => {
        $(#[$enum_doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $name {
            $( $(#[$doc])* $variant($message), )*
        }

        impl $name {
            /// Fully qualified protobuf name of the payload, as stored in the envelope's `event_type`.
            pub fn event_type(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => concat!("tally.v1.", stringify!($message)), )*
                }
            }

            /// The payload as protobuf bytes.
            pub fn encode_payload(&self) -> Vec<u8> {
                match self {
                    $( Self::$variant(e) => prost::Message::encode_to_vec(e), )*
                }
            }

            /// The payload of a stored event of type `event_type`; `None` if no kind has that name.
            pub fn decode_payload(event_type: &str, payload: &[u8]) -> Option<Result<Self, prost::DecodeError>> {
                match event_type {
                    $( concat!("tally.v1.", stringify!($message)) => Some(<$message as prost::Message>::decode(payload).map(Self::$variant)), )*
                    _ => None,
                }
            }

            /// Every type name in the table.
            pub const EVENT_TYPES: &[&str] = &[$( concat!("tally.v1.", stringify!($message)), )*];
        }
    };
}
pub(crate) use event_table;

event_table! {
    /// What happened to the wallet.
    Change {
        /// Version 2 (the customer's data sealed); version 1's `WalletEnrolled` is read through
        /// `codec::decode`'s upcaster into this.
        Enrolled(WalletEnrolledV2),
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
        /// The customer's personal data was erased: their key is gone.
        CustomerErased(CustomerErased),
        /// A catalogue reward's debit was refused (no points moved): the redemption's answer for good.
        RewardRefused(RewardRedemptionRefused),
        /// A catalogue redemption was cancelled: its points came back.
        RewardCancelled(RewardRedemptionCancelled),
        /// Points left for another wallet of the tenant (a transfer's debit).
        TransferredOut(PointsTransferredOut),
        /// Points came in from another wallet (a transfer's credit, one event per kind of lot).
        TransferredIn(PointsTransferredIn),
        /// The wallet refused its step of a transfer (no points moved): its answer for good.
        TransferRefused(PointsTransferRefused),
        /// A transfer the target refused came back (one event per kind of lot).
        TransferReturned(PointsTransferReturned),
        /// The wallet can be found by an identifier (its lookup hash only).
        IdentifierAttached(IdentifierAttached),
        /// The wallet can no longer be found by an identifier.
        IdentifierDetached(IdentifierDetached),
        /// The customer was referred by another wallet's holder.
        ReferralRecorded(ReferralRecorded),
        /// The referee's first qualifying order converted the referral: the referee's bonus.
        ReferralConverted(ReferralConverted),
        /// The referrer's reward for a converted referral.
        ReferralRewarded(ReferralRewarded),
        /// The order that was to convert the referral no longer counts.
        ReferralLapsed(ReferralLapsed),
    }
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
            Change::Matured(_)
            | Change::TierChanged(_)
            | Change::TierReviewed(_)
            | Change::Stamped(_)
            | Change::ExpiringSoon(_)
            | Change::CustomerErased(_)
            | Change::RewardRefused(_)
            | Change::TransferRefused(_)
            | Change::IdentifierAttached(_)
            | Change::IdentifierDetached(_)
            | Change::ReferralRecorded(_)
            | Change::ReferralLapsed(_) => 0,
            Change::CardCompleted(e) => e.reward_points,
            Change::RewardCancelled(e) => e.points,
            Change::TransferredOut(e) => e.points.saturating_neg(),
            Change::TransferredIn(e) => e.points,
            Change::TransferReturned(e) => e.points,
            Change::ReferralConverted(e) => e.referee_points,
            Change::ReferralRewarded(e) => e.points,
        }
    }

    /// The lots this change moved points in or out of, `(lot, points)` — the one a credit opened, those
    /// a debit, hold or expiry took from or gave back to (a refund's pending credits by the version of the
    /// earn that made them) — and when a lot it opened expires (`None`: it opened none, or one that never
    /// expires). What finance's ledger shows of where points sat.
    pub fn lots(&self) -> (Vec<(u64, i64)>, Option<i64>) {
        use tally_proto::v1::{LotOpened, LotPoints};
        let listed = |lots: &[LotPoints]| lots.iter().map(|l| (l.lot, l.points)).collect::<Vec<_>>();
        let opened = |lot: Option<&LotOpened>| match lot.filter(|l| l.points != 0) {
            Some(l) => (vec![(l.lot, l.points)], (l.expires_at_ms != 0).then_some(l.expires_at_ms)),
            None => (Vec::new(), None),
        };
        match self {
            Change::Earned(e) => match (&e.lot, &e.pending) {
                (_, Some(pending)) => (Vec::new(), (pending.expires_at_ms != 0).then_some(pending.expires_at_ms)),
                (lot, None) => opened(lot.as_ref()),
            },
            Change::Purchased(e) => opened(e.lot.as_ref()),
            Change::CardCompleted(e) => opened(e.lot.as_ref()),
            Change::RewardCancelled(e) => opened(e.lot.as_ref()),
            Change::TransferredIn(e) => opened(e.lot.as_ref()),
            Change::TransferReturned(e) => opened(e.lot.as_ref()),
            Change::ReferralConverted(e) => opened(e.lot.as_ref()),
            Change::ReferralRewarded(e) => opened(e.lot.as_ref()),
            Change::TransferredOut(e) => (listed(&e.lots), None),
            Change::Matured(e) => opened(e.lot.as_ref()),
            Change::Adjusted(e) if e.points > 0 => opened(e.lot.as_ref()),
            Change::Adjusted(e) => (listed(&e.lots), None),
            Change::Redeemed(e) => (listed(&e.lots), None),
            Change::Reversed(e) => (e.pending.iter().chain(&e.lots).map(|l| (l.lot, l.points)).collect(), None),
            Change::Closed(e) => (listed(&e.lots), None),
            Change::Held(e) => (listed(&e.lots), None),
            Change::Captured(e) => (listed(&e.lots), None),
            Change::Released(e) => (listed(&e.lots), None),
            Change::Expired(e) => (vec![(e.lot, e.points)], Some(e.expired_at_ms)),
            Change::ExpiringSoon(e) => (vec![(e.lot, e.points)], Some(e.expires_at_ms)),
            Change::Enrolled(_)
            | Change::TierChanged(_)
            | Change::TierReviewed(_)
            | Change::Stamped(_)
            | Change::CustomerErased(_)
            | Change::RewardRefused(_)
            | Change::TransferRefused(_)
            | Change::IdentifierAttached(_)
            | Change::IdentifierDetached(_)
            | Change::ReferralRecorded(_)
            | Change::ReferralLapsed(_) => (Vec::new(), None),
        }
    }

    /// Whether time brought this change rather than the command it was recorded with (an expiry, a
    /// maturity, a notice, a review, a hold that timed out): no caller made it, so the log names none.
    pub fn by_time(&self) -> bool {
        match self {
            Change::Expired(_) | Change::Matured(_) | Change::ExpiringSoon(_) | Change::TierReviewed(_) | Change::ReferralLapsed(_) => true,
            Change::ReferralConverted(e) => e.on_maturity,
            Change::TierChanged(e) => e.r#move == tally_proto::v1::TierMove::Down as i32,
            Change::Released(e) => e.reason == tally_proto::v1::HoldEnd::Expired as i32,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Change;
    use crate::domain::program::ProgramChange;

    #[test]
    fn what_time_brought_is_told_from_what_a_caller_did() {
        use tally_proto::v1::{HoldEnd, HoldReleased, PointsExpired, PointsRedeemed, TierChanged, TierMove};
        assert!(Change::Expired(PointsExpired::default()).by_time());
        assert!(!Change::Redeemed(PointsRedeemed::default()).by_time());
        let released = |reason: HoldEnd| Change::Released(HoldReleased { reason: reason as i32, ..HoldReleased::default() });
        assert!(released(HoldEnd::Expired).by_time() && !released(HoldEnd::Voided).by_time());
        let tier = |to: TierMove| Change::TierChanged(TierChanged { r#move: to as i32, ..TierChanged::default() });
        assert!(tier(TierMove::Down).by_time() && !tier(TierMove::Up).by_time());
    }

    #[test]
    fn every_kind_in_the_tables_decodes_under_its_own_name() {
        for event_type in Change::EVENT_TYPES {
            let change = Change::decode_payload(event_type, &[]).expect("a listed name").expect("an empty payload decodes");
            assert_eq!(change.event_type(), *event_type);
            assert!(change.encode_payload().is_empty(), "{event_type}: defaults encode to nothing");
        }
        for event_type in ProgramChange::EVENT_TYPES {
            let change = ProgramChange::decode_payload(event_type, &[]).expect("a listed name").expect("an empty payload decodes");
            assert_eq!(change.event_type(), *event_type);
        }
        assert_eq!(Change::EVENT_TYPES.len(), 30);
        assert!(Change::decode_payload("tally.v1.ProgramCreated", &[]).is_none(), "tables do not mix");
    }
}

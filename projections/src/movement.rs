//! What read models see of the log: each wallet event decoded once into a flat [`Movement`]. Events of
//! other streams are not wallet movements and are passed over; a wallet event that cannot be decoded
//! (or holds amounts or times outside the read models' range) is a poison event, which the runner
//! quarantines ([`crate::quarantine`]).
//!
//! Free text (reasons, references, idempotency keys) reaches the read models with control characters
//! (U+0000..U+001F, U+007F) replaced by U+FFFD: PostgreSQL cannot store a NUL in `text`, logs written
//! before the domain refused them may hold some, and every read model shows the same text. Ids are not
//! rewritten (two ids must not become one): an id PostgreSQL cannot store quarantines its event there.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tally_engine::codec;
use tally_engine::domain::{Change, identifiers};
use tally_engine::limits::BALANCE_ABS_MAX;
use tally_engine::store::{RecordedEvent, StreamId};
use tally_proto::v1::wallet_enrolled_v2::Customer;

use crate::ProjectionError;
use crate::quarantine::QuarantinedEvent;

/// What a movement did to the wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MovementKind {
    /// The wallet was opened; no points move.
    Enroll,
    Earn,
    /// Points spent (a cancelled catalogue redemption: a redemption of negative points, so finance's
    /// redemptions are net).
    Redeem,
    /// A signed manual correction.
    Adjust,
    /// Points of an earlier earn taken back (a refund).
    Reverse,
    /// The wallet was closed; a positive balance is forfeited.
    Close,
    /// Points set aside for a POS redemption; the balance is unchanged.
    Hold,
    /// A hold released unspent (voided, expired, wallet closed); the balance is unchanged.
    Release,
    /// Points bought with a credit package: purchased, not earned.
    Purchase,
    /// What was left of a lot of points expired.
    Expire,
    /// Pending points became available; the balance is unchanged.
    Mature,
    /// The customer's tier changed or was kept at a review (the reference is the tier); no points move.
    Tier,
    /// Stamps given by hand (the reference is the card); no points move.
    Stamp,
    /// A lot's points expire soon (the reference is the lot); no points move.
    Notice,
    /// The customer's personal data was erased (the reason is the operator's); no points move. Read
    /// models drop the customer's reference when they apply it.
    Erase,
    /// A catalogue reward's redemption (the reference is the reward) or a step of a transfer (the
    /// reference is the transfer) was refused; no points move.
    Refused,
    /// Points moved between two wallets of the tenant (the reference is the transfer): out of the source
    /// (negative), into the target, or back to the source when the target refused (positive). A
    /// tenant's transfers sum to zero once each has ended.
    Transfer,
    /// An identifier the wallet can be found by was attached or detached (the reference is its kind:
    /// card, phone, email, crm_id, referral_code — never its value, which the log does not hold); no points move.
    Identifier,
    /// The customer was recorded as referred (the reference is the referrer's wallet), or their referral
    /// converted without a bonus for them (the reference is the order); no points move. (A bonus is an
    /// `Earn`: the referee's referenced by its order, the referrer's by `referral:<referee>`.)
    Referral,
}

impl MovementKind {
    /// The name used in read models (`ledger_entries.kind`, history pages).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enroll => "enroll",
            Self::Earn => "earn",
            Self::Redeem => "redeem",
            Self::Adjust => "adjust",
            Self::Reverse => "reverse",
            Self::Close => "close",
            Self::Hold => "hold",
            Self::Release => "release",
            Self::Purchase => "purchase",
            Self::Expire => "expire",
            Self::Mature => "mature",
            Self::Tier => "tier",
            Self::Stamp => "stamp",
            Self::Notice => "notice",
            Self::Erase => "erase",
            Self::Refused => "refused",
            Self::Transfer => "transfer",
            Self::Identifier => "identifier",
            Self::Referral => "referral",
        }
    }
}

/// One wallet event, flattened for read models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movement {
    pub position: u64,
    pub stream_version: u64,
    pub tenant: Arc<str>,
    pub wallet: Arc<str>,
    pub recorded_at_ms: i64,
    pub kind: MovementKind,
    /// The event's persisted type name (`tally.v1.PointsEarned`…).
    pub event_type: &'static str,
    /// Signed effect on the balance (the balance is the sum of these).
    pub points: i64,
    pub reason: String,
    /// What the movement refers to: the order (earn, reverse), the reward (redeem), the staff member
    /// (adjust); empty for an enrolment (the customer's reference is personal data: see `customer_ref`).
    pub reference: String,
    /// An enrolment's customer reference as a version 1 event recorded it in clear (empty for a sealed
    /// one). Only wallet rows keep it, never a history row or an export.
    pub customer_ref: String,
    /// An enrolment's sealed customer data (`SealedPersonalData`, encoded): what wallet rows keep, opened
    /// only when read (`customers::reveal`), so destroying the key erases it from them too.
    pub sealed_customer: Vec<u8>,
    pub idempotency_key: String,
    /// The API key that made it (`EventMetadata::principal`); empty for what the engine did itself.
    pub principal: String,
    /// The lots it moved points in or out of, `(lot, points)`, and when a lot it opened expires
    /// (`Change::lots`): for the ledger export.
    pub lots: Vec<(u64, i64)>,
    pub expires_at_ms: Option<i64>,
}

/// 9999-12-31T23:59:59.999Z: read models keep calendar dates, which end there.
const RECORDED_AT_MS_MAX: i64 = 253_402_300_799_999;

/// Splits `"<tenant>/wallet/<wallet>"`; `None` for any other stream.
pub fn parse_wallet_stream(stream: &str) -> Option<(&str, &str)> {
    let (tenant, rest) = stream.split_once('/')?;
    let wallet = rest.strip_prefix("wallet/")?;
    (!tenant.is_empty() && !wallet.is_empty() && !wallet.contains('/')).then_some((tenant, wallet))
}

/// Text as read models store it: control characters replaced by U+FFFD (see the module's note).
pub fn storable_text(text: &str) -> Cow<'_, str> {
    let control = |c: char| c.is_ascii_control();
    if text.contains(control) { Cow::Owned(text.replace(control, "\u{fffd}")) } else { Cow::Borrowed(text) }
}

fn into_storable(text: String) -> String {
    match storable_text(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(clean) => clean,
    }
}

/// A batch of the log, decoded: the wallet movements, and the poison events among them.
#[derive(Debug, Default)]
pub struct Decoded {
    pub movements: Vec<Movement>,
    pub poisoned: Vec<QuarantinedEvent>,
}

/// Decodes a batch read from the log. Non-wallet events are skipped; a wallet event that does not
/// decode is [`ProjectionError::Poison`], naming its position, stream and type.
pub fn decode_batch(events: Vec<RecordedEvent>) -> Result<Vec<Movement>, ProjectionError> {
    let decoded = decode_events(events);
    match decoded.poisoned.into_iter().next() {
        Some(QuarantinedEvent { position, stream, event_type, reason }) => {
            Err(ProjectionError::Poison { position, stream, event_type, reason })
        }
        None => Ok(decoded.movements),
    }
}

/// Decodes a batch read from the log. Non-wallet events are skipped; a wallet event that does not
/// decode, or holds out-of-range figures, is listed among the poisoned, naming its position, stream
/// and type.
pub fn decode_events(events: Vec<RecordedEvent>) -> Decoded {
    let mut decoded = Decoded { movements: Vec::with_capacity(events.len()), poisoned: Vec::new() };
    let mut names: Option<(Arc<str>, Arc<str>, StreamId)> = None;
    for recorded in events {
        let Some((tenant, wallet)) = parse_wallet_stream(recorded.stream_id.as_str()) else { continue };
        // Consecutive events of one stream (one append) share their name strings.
        let (tenant, wallet) = match &names {
            Some((t, w, stream)) if *stream == recorded.stream_id => (t.clone(), w.clone()),
            _ => {
                let (t, w): (Arc<str>, Arc<str>) = (Arc::from(tenant), Arc::from(wallet));
                names = Some((t.clone(), w.clone(), recorded.stream_id.clone()));
                (t, w)
            }
        };
        match decode_one(recorded, tenant, wallet) {
            Ok(movement) => decoded.movements.push(movement),
            Err(poisoned) => decoded.poisoned.push(poisoned),
        }
    }
    decoded
}

/// Why an event's time or points are outside what the ledger holds (`None`: inside). The domain never
/// writes such events; a log that holds them was written by something else.
fn outside_the_ledger(event: &tally_engine::domain::Event) -> Option<String> {
    if !(0..=RECORDED_AT_MS_MAX).contains(&event.recorded_at_ms) {
        return Some(format!("recorded time {} ms is outside 1970..9999", event.recorded_at_ms));
    }
    let points = event.change.points_delta();
    points.checked_abs().is_none_or(|p| p > BALANCE_ABS_MAX).then(|| format!("{points} points is outside the ledger's range"))
}

/// Decodes one wallet event of `tenant`'s `wallet`.
fn decode_one(mut recorded: RecordedEvent, tenant: Arc<str>, wallet: Arc<str>) -> Result<Movement, QuarantinedEvent> {
    let (position, stream_version) = (recorded.global_position, recorded.stream_version);
    let principal = std::mem::take(&mut recorded.data.metadata.principal);
    let stream = recorded.stream_id.clone();
    let event_type = recorded.data.event_type.clone();
    let event = codec::decode(recorded).map_err(|error| QuarantinedEvent {
        position,
        stream: stream.to_string(),
        event_type,
        reason: error.to_string(),
    })?;
    let out_of_range = |what: String| QuarantinedEvent {
        position,
        stream: stream.to_string(),
        event_type: event.change.event_type().to_owned(),
        reason: what,
    };
    if let Some(what) = outside_the_ledger(&event) {
        return Err(out_of_range(what));
    }
    let points = event.change.points_delta();
    let event_type = event.change.event_type();
    let (lots, expires_at_ms) = event.change.lots();
    let (mut customer_ref, mut sealed_customer) = (String::new(), Vec::new());
    let (kind, reason, reference) = match event.change {
        Change::Enrolled(e) => {
            (customer_ref, sealed_customer) = customer(e.customer);
            (MovementKind::Enroll, String::new(), String::new())
        }
        Change::CustomerErased(e) => (MovementKind::Erase, e.reason, String::new()),
        Change::Earned(e) => (MovementKind::Earn, e.reason, e.source_ref),
        Change::Redeemed(e) => (MovementKind::Redeem, String::new(), e.reward_ref),
        Change::Adjusted(e) => (MovementKind::Adjust, e.reason, e.staff_ref),
        Change::Reversed(e) => (MovementKind::Reverse, e.reason, e.source_ref),
        Change::Closed(e) => (MovementKind::Close, e.reason, String::new()),
        Change::Held(e) => (MovementKind::Hold, String::new(), e.hold_id),
        Change::Captured(e) => (MovementKind::Redeem, String::new(), e.reward_ref), // a redemption for finance
        Change::Released(e) => (MovementKind::Release, String::new(), e.hold_id),
        Change::Purchased(e) => (MovementKind::Purchase, e.package_id, e.purchase_id),
        // The reference names the lot: the stream version of the event that opened it.
        Change::Expired(e) => (MovementKind::Expire, String::new(), format!("lot:{}", e.lot)),
        Change::Matured(e) => (MovementKind::Mature, String::new(), e.source_ref),
        Change::TierChanged(e) => {
            (MovementKind::Tier, if e.r#move == tally_engine::domain::TierMove::Down as i32 { "down" } else { "up" }.to_owned(), e.to_tier)
        }
        Change::TierReviewed(e) => (MovementKind::Tier, "kept".to_owned(), e.tier),
        Change::Stamped(e) => (MovementKind::Stamp, e.reason, e.card_id),
        Change::ExpiringSoon(e) => (MovementKind::Notice, format!("{} points expire soon", e.points), format!("lot:{}", e.lot)),
        // A full card's reward points are earned points; a refused redemption moves none.
        Change::CardCompleted(e) => (MovementKind::Earn, e.reward_ref, format!("card:{}", e.card_id)),
        Change::RewardRefused(e) => (MovementKind::Refused, format!("{}: {}", e.code, e.message), e.reward_id),
        Change::RewardCancelled(e) => (MovementKind::Redeem, e.reason, e.reward_id),
        change @ (Change::TransferredOut(_) | Change::TransferredIn(_) | Change::TransferReturned(_) | Change::TransferRefused(_)) => {
            transfer(change)
        }
        change @ (Change::IdentifierAttached(_) | Change::IdentifierDetached(_)) => who(change),
        change @ (Change::ReferralRecorded(_) | Change::ReferralConverted(_) | Change::ReferralLapsed(_) | Change::ReferralRewarded(_)) => {
            referral(change)
        }
    };
    Ok(Movement {
        position,
        stream_version,
        tenant,
        wallet,
        recorded_at_ms: event.recorded_at_ms,
        kind,
        event_type,
        points,
        reason: into_storable(reason),
        reference: into_storable(reference),
        idempotency_key: into_storable(event.idempotency_key),
        principal: into_storable(principal),
        lots,
        expires_at_ms,
        customer_ref,
        sealed_customer,
    })
}

/// An enrolment's customer: a version 1 enrolment's reference in clear, or a version 2 one's sealed bytes.
fn customer(customer: Option<Customer>) -> (String, Vec<u8>) {
    match customer {
        Some(Customer::Clear(clear)) => (into_storable(clear.customer_ref), Vec::new()),
        Some(Customer::Sealed(sealed)) => (String::new(), prost::Message::encode_to_vec(&sealed)),
        None => (String::new(), Vec::new()),
    }
}

/// Who the customer is (an identifier attached or detached: its kind, never its value), as a movement: its
/// kind, its reason and its reference.
fn who(change: Change) -> (MovementKind, String, String) {
    let kind = |kind: i32| identifiers::kind_name(kind).to_owned();
    match change {
        Change::IdentifierAttached(e) => (MovementKind::Identifier, "attached".to_owned(), kind(e.kind)),
        Change::IdentifierDetached(e) => (MovementKind::Identifier, format!("detached: {}", e.reason), kind(e.kind)),
        _ => unreachable!("called for identifiers only"),
    }
}

/// A referral — recorded, converted, lapsed, rewarded — as a movement. Its bonuses are earned points: the
/// referee's with its order, the referrer's after it.
fn referral(change: Change) -> (MovementKind, String, String) {
    match change {
        Change::ReferralRecorded(e) => (MovementKind::Referral, String::new(), e.referrer_wallet_id),
        Change::ReferralConverted(e) => {
            let kind = if e.referee_points == 0 { MovementKind::Referral } else { MovementKind::Earn };
            (kind, format!("referral converted (referred by {})", e.referrer_wallet_id), e.order_id)
        }
        Change::ReferralLapsed(e) => (MovementKind::Referral, format!("referral lapsed: {}", e.reason), e.order_id),
        Change::ReferralRewarded(e) if !e.refused.is_empty() => {
            (MovementKind::Refused, format!("{}: referral reward", e.refused), format!("referral:{}", e.referee_wallet_id))
        }
        Change::ReferralRewarded(e) => {
            (MovementKind::Earn, format!("referral reward (referred {})", e.referee_wallet_id), format!("referral:{}", e.referee_wallet_id))
        }
        _ => unreachable!("called for referrals only"),
    }
}

/// A transfer's step as a movement: its kind, its reason (with the other wallet) and the transfer id.
fn transfer(change: Change) -> (MovementKind, String, String) {
    match change {
        Change::TransferredOut(e) => (MovementKind::Transfer, format!("to {}: {}", e.to_wallet_id, e.reason), e.transfer_id),
        Change::TransferredIn(e) => (MovementKind::Transfer, format!("from {}: {}", e.from_wallet_id, e.reason), e.transfer_id),
        Change::TransferReturned(e) => (MovementKind::Transfer, format!("returned: {}", e.code), e.transfer_id),
        Change::TransferRefused(e) => (MovementKind::Refused, format!("{}: {}", e.code, e.message), e.transfer_id),
        _ => unreachable!("called for a transfer's steps only"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_in_text_are_replaced_and_clean_text_is_not_copied() {
        assert_eq!(storable_text("a\0b\u{7}c\u{7f}"), "a\u{fffd}b\u{fffd}c\u{fffd}");
        assert!(matches!(storable_text("plain text, é"), Cow::Borrowed(_)));
    }

    #[test]
    fn only_wallet_streams_are_wallet_streams() {
        assert_eq!(parse_wallet_stream("acme/wallet/c-1"), Some(("acme", "c-1")));
        assert_eq!(parse_wallet_stream("acme/program"), None);
        assert_eq!(parse_wallet_stream("acme/wallet/"), None);
        assert_eq!(parse_wallet_stream("/wallet/c"), None);
        assert_eq!(parse_wallet_stream("acme/wallet/a/b"), None);
    }
}

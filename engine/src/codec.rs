//! Between the domain and the store: wallet stream names, and domain events to and from the persisted
//! envelope (`tally.v1` protobuf payloads).

use prost::Message;
use tally_proto::v1::{
    CreditPackageDefined, EarnReversed, ExpiryPolicySet, HoldCaptured, HoldReleased, PendingPeriodSet, PointsAdjusted, PointsEarned,
    PointsExpired, PointsExpiringSoon, PointsHeld, PointsMatured, PointsPurchased, PointsRedeemed, ProgramCreated, RefundWindowSet,
    RulesPublished, StampCardCompleted, StampCardDefined, StampsAdded, TierChanged, TierReviewed, TiersDefined, WalletClosed,
    WalletEnrolled,
};

use crate::domain::program::{ProgramChange, ProgramEvent};
use crate::domain::{Change, Event, TenantId, WalletId};
use crate::store::{EventData, EventMetadata, RecordedEvent, StreamId};

/// Schema version written for every wallet event today. Bumping it requires an upcaster in [`decode`].
pub const WALLET_SCHEMA_VERSION: u32 = 1;

/// The stream of one wallet: `"<tenant>/wallet/<wallet>"`. Ids cannot contain `/`, so this is unambiguous.
pub fn wallet_stream(tenant: &TenantId, wallet: &WalletId) -> StreamId {
    StreamId::new(&format!("{tenant}/wallet/{wallet}")).expect("validated ids always make a valid stream id")
}

/// The wallet a stream belongs to, if it is a wallet stream with valid ids.
pub fn wallet_of(stream: &str) -> Option<(TenantId, WalletId)> {
    let (tenant, rest) = stream.split_once('/')?;
    let wallet = rest.strip_prefix("wallet/")?;
    Some((TenantId::parse(tenant).ok()?, WalletId::parse(wallet).ok()?))
}

/// The stream of a tenant's program: `"<tenant>/program"`.
pub fn program_stream(tenant: &TenantId) -> StreamId {
    StreamId::new(&format!("{tenant}/program")).expect("validated ids always make a valid stream id")
}

/// Schema version written for every program event today.
pub const PROGRAM_SCHEMA_VERSION: u32 = 1;

pub fn encode_program(event: &ProgramEvent, metadata: &EventMetadata) -> EventData {
    let payload = match &event.change {
        ProgramChange::Created(e) => e.encode_to_vec(),
        ProgramChange::RulesPublished(e) => e.encode_to_vec(),
        ProgramChange::PackageDefined(e) => e.encode_to_vec(),
        ProgramChange::ExpiryPolicySet(e) => e.encode_to_vec(),
        ProgramChange::PendingPeriodSet(e) => e.encode_to_vec(),
        ProgramChange::RefundWindowSet(e) => e.encode_to_vec(),
        ProgramChange::TiersDefined(e) => e.encode_to_vec(),
        ProgramChange::StampCardDefined(e) => e.encode_to_vec(),
    };
    let facts = CommandFacts { key: &event.idempotency_key, fingerprint: event.command_fingerprint, recorded_at_ms: event.recorded_at_ms };
    envelope(event.change.event_type(), PROGRAM_SCHEMA_VERSION, facts, metadata, payload)
}

/// Decodes a stored program event.
pub fn decode_program(recorded: RecordedEvent) -> Result<ProgramEvent, CodecError> {
    let RecordedEvent { global_position: position, data, .. } = recorded;
    if data.schema_version != PROGRAM_SCHEMA_VERSION {
        return Err(CodecError::UnsupportedSchemaVersion { position, event_type: data.event_type, schema_version: data.schema_version });
    }
    let undecodable =
        |e: prost::DecodeError| CodecError::Undecodable { position, event_type: data.event_type.clone(), reason: e.to_string() };
    let payload = data.payload.as_slice();
    let change = match data.event_type.as_str() {
        "tally.v1.ProgramCreated" => ProgramChange::Created(ProgramCreated::decode(payload).map_err(undecodable)?),
        "tally.v1.RulesPublished" => ProgramChange::RulesPublished(RulesPublished::decode(payload).map_err(undecodable)?),
        "tally.v1.CreditPackageDefined" => ProgramChange::PackageDefined(CreditPackageDefined::decode(payload).map_err(undecodable)?),
        "tally.v1.ExpiryPolicySet" => ProgramChange::ExpiryPolicySet(ExpiryPolicySet::decode(payload).map_err(undecodable)?),
        "tally.v1.PendingPeriodSet" => ProgramChange::PendingPeriodSet(PendingPeriodSet::decode(payload).map_err(undecodable)?),
        "tally.v1.RefundWindowSet" => ProgramChange::RefundWindowSet(RefundWindowSet::decode(payload).map_err(undecodable)?),
        "tally.v1.TiersDefined" => ProgramChange::TiersDefined(TiersDefined::decode(payload).map_err(undecodable)?),
        "tally.v1.StampCardDefined" => ProgramChange::StampCardDefined(StampCardDefined::decode(payload).map_err(undecodable)?),
        _ => return Err(CodecError::UnknownEventType { position, event_type: data.event_type }),
    };
    Ok(ProgramEvent {
        idempotency_key: data.idempotency_key,
        command_fingerprint: data.command_fingerprint,
        recorded_at_ms: data.recorded_at_ms,
        change,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("event at position {position} has unknown type {event_type:?}")]
    UnknownEventType { position: u64, event_type: String },
    #[error("event at position {position} ({event_type}) has unsupported schema version {schema_version}")]
    UnsupportedSchemaVersion { position: u64, event_type: String, schema_version: u32 },
    #[error("event at position {position} ({event_type}) cannot be decoded: {reason}")]
    Undecodable { position: u64, event_type: String, reason: String },
}

pub fn encode(event: &Event, metadata: &EventMetadata) -> EventData {
    let payload = match &event.change {
        Change::Enrolled(e) => e.encode_to_vec(),
        Change::Earned(e) => e.encode_to_vec(),
        Change::Redeemed(e) => e.encode_to_vec(),
        Change::Adjusted(e) => e.encode_to_vec(),
        Change::Reversed(e) => e.encode_to_vec(),
        Change::Closed(e) => e.encode_to_vec(),
        Change::Held(e) => e.encode_to_vec(),
        Change::Captured(e) => e.encode_to_vec(),
        Change::Released(e) => e.encode_to_vec(),
        Change::Purchased(e) => e.encode_to_vec(),
        Change::Expired(e) => e.encode_to_vec(),
        Change::Matured(e) => e.encode_to_vec(),
        Change::TierChanged(e) => e.encode_to_vec(),
        Change::TierReviewed(e) => e.encode_to_vec(),
        Change::Stamped(e) => e.encode_to_vec(),
        Change::ExpiringSoon(e) => e.encode_to_vec(),
        Change::CardCompleted(e) => e.encode_to_vec(),
    };
    let facts = CommandFacts { key: &event.idempotency_key, fingerprint: event.command_fingerprint, recorded_at_ms: event.recorded_at_ms };
    envelope(event.change.event_type(), WALLET_SCHEMA_VERSION, facts, metadata, payload)
}

/// What every event carries of the command that produced it.
struct CommandFacts<'a> {
    key: &'a str,
    fingerprint: u64,
    recorded_at_ms: i64,
}

/// The envelope around an encoded payload, for any aggregate's events.
fn envelope(event_type: &str, schema_version: u32, facts: CommandFacts<'_>, metadata: &EventMetadata, payload: Vec<u8>) -> EventData {
    EventData {
        event_type: event_type.to_owned(),
        schema_version,
        recorded_at_ms: facts.recorded_at_ms,
        idempotency_key: facts.key.to_owned(),
        command_fingerprint: facts.fingerprint,
        metadata: metadata.clone(),
        payload,
    }
}

/// Decodes a stored wallet event, taking it apart without copying its strings.
pub fn decode(recorded: RecordedEvent) -> Result<Event, CodecError> {
    let RecordedEvent { global_position: position, data, .. } = recorded;
    if data.schema_version != WALLET_SCHEMA_VERSION {
        return Err(CodecError::UnsupportedSchemaVersion { position, event_type: data.event_type, schema_version: data.schema_version });
    }
    let payload = data.payload.as_slice();
    let undecodable =
        |e: prost::DecodeError| CodecError::Undecodable { position, event_type: data.event_type.clone(), reason: e.to_string() };
    let change = match data.event_type.as_str() {
        "tally.v1.WalletEnrolled" => Change::Enrolled(WalletEnrolled::decode(payload).map_err(undecodable)?),
        "tally.v1.PointsEarned" => Change::Earned(PointsEarned::decode(payload).map_err(undecodable)?),
        "tally.v1.PointsRedeemed" => Change::Redeemed(PointsRedeemed::decode(payload).map_err(undecodable)?),
        "tally.v1.PointsAdjusted" => Change::Adjusted(PointsAdjusted::decode(payload).map_err(undecodable)?),
        "tally.v1.EarnReversed" => Change::Reversed(EarnReversed::decode(payload).map_err(undecodable)?),
        "tally.v1.WalletClosed" => Change::Closed(WalletClosed::decode(payload).map_err(undecodable)?),
        "tally.v1.PointsHeld" => Change::Held(PointsHeld::decode(payload).map_err(undecodable)?),
        "tally.v1.HoldCaptured" => Change::Captured(HoldCaptured::decode(payload).map_err(undecodable)?),
        "tally.v1.HoldReleased" => Change::Released(HoldReleased::decode(payload).map_err(undecodable)?),
        "tally.v1.PointsPurchased" => Change::Purchased(PointsPurchased::decode(payload).map_err(undecodable)?),
        "tally.v1.PointsExpired" => Change::Expired(PointsExpired::decode(payload).map_err(undecodable)?),
        "tally.v1.PointsMatured" => Change::Matured(PointsMatured::decode(payload).map_err(undecodable)?),
        "tally.v1.TierChanged" => Change::TierChanged(TierChanged::decode(payload).map_err(undecodable)?),
        "tally.v1.TierReviewed" => Change::TierReviewed(TierReviewed::decode(payload).map_err(undecodable)?),
        "tally.v1.StampsAdded" => Change::Stamped(StampsAdded::decode(payload).map_err(undecodable)?),
        "tally.v1.PointsExpiringSoon" => Change::ExpiringSoon(PointsExpiringSoon::decode(payload).map_err(undecodable)?),
        "tally.v1.StampCardCompleted" => Change::CardCompleted(StampCardCompleted::decode(payload).map_err(undecodable)?),
        _ => return Err(CodecError::UnknownEventType { position, event_type: data.event_type }),
    };
    Ok(Event {
        idempotency_key: data.idempotency_key,
        command_fingerprint: data.command_fingerprint,
        recorded_at_ms: data.recorded_at_ms,
        change,
    })
}

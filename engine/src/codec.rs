//! Between the domain and the store: wallet stream names, and domain events to and from the persisted
//! envelope (`tally.v1` protobuf payloads).

use tally_proto::v1::wallet_enrolled_v2::Customer;
use tally_proto::v1::{IdentifierClaimed, IdentifierReleased, OrderClaimed, PersonalData, WalletEnrolled, WalletEnrolledV2};

use crate::domain::access::{KEYS_STREAM, KeyChange};
use crate::domain::flows::{FlowChange, FlowEvent};
use crate::domain::program::{ProgramChange, ProgramEvent};
use crate::domain::rewards::{StockChange, StockEvent};
use crate::domain::{Change, CommandFingerprint, Event, TenantId, WalletId};
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

/// The stream that claims order `order_id` for one wallet of `tenant`: `"<tenant>/order/<order id>"`.
pub fn order_stream(tenant: &TenantId, order_id: &str) -> Result<StreamId, crate::store::StoreError> {
    StreamId::new(&format!("{tenant}/order/{order_id}"))
}

/// The claim of an order id by a wallet, under the command that earned for it.
pub fn encode_claim(claim: &OrderClaimed, command: &crate::domain::Command, recorded_at_ms: i64, metadata: &EventMetadata) -> EventData {
    let facts = CommandFacts { key: &command.idempotency_key, fingerprint: command.fingerprint(), recorded_at_ms };
    envelope(CLAIM_EVENT_TYPE, CLAIM_SCHEMA_VERSION, facts, metadata, prost::Message::encode_to_vec(claim))
}

/// A stored order claim.
pub fn decode_claim(recorded: RecordedEvent) -> Result<OrderClaimed, CodecError> {
    let RecordedEvent { global_position: position, data, .. } = recorded;
    if data.event_type != CLAIM_EVENT_TYPE {
        return Err(CodecError::UnknownEventType { position, event_type: data.event_type });
    }
    if data.schema_version != CLAIM_SCHEMA_VERSION {
        return Err(CodecError::UnsupportedSchemaVersion { position, event_type: data.event_type, schema_version: data.schema_version });
    }
    <OrderClaimed as prost::Message>::decode(data.payload.as_slice()).map_err(|e| CodecError::Undecodable {
        position,
        event_type: data.event_type,
        reason: e.to_string(),
    })
}

const CLAIM_EVENT_TYPE: &str = "tally.v1.OrderClaimed";
const CLAIM_SCHEMA_VERSION: u32 = 1;

/// The stream that settles which wallet of `tenant` an identifier belongs to:
/// `"<tenant>/identifier/<lookup>"` (`crate::domain::identifiers::lookup`).
pub fn identifier_stream(tenant: &TenantId, lookup: &str) -> Result<StreamId, crate::store::StoreError> {
    StreamId::new(&format!("{tenant}/identifier/{lookup}"))
}

/// The subject the tenant's identifier lookup key is kept under (beside the wallets' personal keys).
pub fn identifier_key_subject(tenant: &TenantId) -> StreamId {
    StreamId::new(&format!("{tenant}/identifiers")).expect("validated ids always make a valid stream id")
}

/// The subject of the lookup key of the tenant whose identifier stream `stream` is, if it is one.
pub fn identifier_key_subject_of(stream: &str) -> Option<StreamId> {
    let (tenant, rest) = stream.split_once('/')?;
    rest.starts_with("identifier/").then_some(())?;
    Some(identifier_key_subject(&TenantId::parse(tenant).ok()?))
}

/// An event of an identifier's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum IdentifierClaim {
    Claimed(IdentifierClaimed),
    Released(IdentifierReleased),
}

const IDENTIFIER_CLAIMED: &str = "tally.v1.IdentifierClaimed";
const IDENTIFIER_RELEASED: &str = "tally.v1.IdentifierReleased";

/// An identifier's claim or release, under the wallet command that made it.
pub fn encode_identifier(
    claim: &IdentifierClaim,
    command: &crate::domain::Command,
    recorded_at_ms: i64,
    metadata: &EventMetadata,
) -> EventData {
    let facts = CommandFacts { key: &command.idempotency_key, fingerprint: command.fingerprint(), recorded_at_ms };
    let (event_type, payload) = match claim {
        IdentifierClaim::Claimed(e) => (IDENTIFIER_CLAIMED, prost::Message::encode_to_vec(e)),
        IdentifierClaim::Released(e) => (IDENTIFIER_RELEASED, prost::Message::encode_to_vec(e)),
    };
    envelope(event_type, CLAIM_SCHEMA_VERSION, facts, metadata, payload)
}

/// A stored event of an identifier's stream.
pub fn decode_identifier(recorded: RecordedEvent) -> Result<IdentifierClaim, CodecError> {
    let RecordedEvent { global_position: position, data, .. } = recorded;
    if data.schema_version != CLAIM_SCHEMA_VERSION {
        return Err(CodecError::UnsupportedSchemaVersion { position, event_type: data.event_type, schema_version: data.schema_version });
    }
    let undecodable = |e: prost::DecodeError, event_type: &str| CodecError::Undecodable {
        position,
        event_type: event_type.to_owned(),
        reason: e.to_string(),
    };
    match data.event_type.as_str() {
        IDENTIFIER_CLAIMED => <IdentifierClaimed as prost::Message>::decode(data.payload.as_slice())
            .map(IdentifierClaim::Claimed)
            .map_err(|e| undecodable(e, IDENTIFIER_CLAIMED)),
        IDENTIFIER_RELEASED => <IdentifierReleased as prost::Message>::decode(data.payload.as_slice())
            .map(IdentifierClaim::Released)
            .map_err(|e| undecodable(e, IDENTIFIER_RELEASED)),
        _ => Err(CodecError::UnknownEventType { position, event_type: data.event_type }),
    }
}

/// Schema version written for every program event today.
pub const PROGRAM_SCHEMA_VERSION: u32 = 1;

pub fn encode_program(event: &ProgramEvent, metadata: &EventMetadata) -> EventData {
    let payload = event.change.encode_payload();
    let facts = CommandFacts { key: &event.idempotency_key, fingerprint: event.command_fingerprint, recorded_at_ms: event.recorded_at_ms };
    envelope(event.change.event_type(), PROGRAM_SCHEMA_VERSION, facts, metadata, payload)
}

/// Decodes a stored program event.
pub fn decode_program(recorded: RecordedEvent) -> Result<ProgramEvent, CodecError> {
    let RecordedEvent { global_position: position, data, .. } = recorded;
    if data.schema_version != PROGRAM_SCHEMA_VERSION {
        return Err(CodecError::UnsupportedSchemaVersion { position, event_type: data.event_type, schema_version: data.schema_version });
    }
    let change = payload(position, &data, ProgramChange::decode_payload)?;
    Ok(ProgramEvent {
        command_fingerprint: fingerprint(&data),
        idempotency_key: data.idempotency_key,
        recorded_at_ms: data.recorded_at_ms,
        change,
    })
}

/// The stock of a tenant's limited reward: `"<tenant>/reward/<reward id>"`.
pub fn reward_stream(tenant: &TenantId, reward_id: &str) -> Result<StreamId, crate::store::StoreError> {
    StreamId::new(&format!("{tenant}/reward/{reward_id}"))
}

/// A flow of a tenant's: `"<tenant>/flow/<flow id>"`.
pub fn flow_stream(tenant: &TenantId, flow_id: &str) -> Result<StreamId, crate::store::StoreError> {
    StreamId::new(&format!("{tenant}/flow/{flow_id}"))
}

/// The tenant and flow id of a flow stream.
pub fn flow_of(stream: &str) -> Option<(TenantId, &str)> {
    let (tenant, rest) = stream.split_once('/')?;
    let flow = rest.strip_prefix("flow/")?;
    Some((TenantId::parse(tenant).ok()?, flow))
}

/// Schema version written for every stock and flow event today.
pub const FLOW_SCHEMA_VERSION: u32 = 1;

pub fn encode_stock(event: &StockEvent, metadata: &EventMetadata) -> EventData {
    let facts = CommandFacts { key: &event.idempotency_key, fingerprint: event.command_fingerprint, recorded_at_ms: event.recorded_at_ms };
    envelope(event.change.event_type(), FLOW_SCHEMA_VERSION, facts, metadata, event.change.encode_payload())
}

/// Decodes a stored stock event.
pub fn decode_stock(recorded: RecordedEvent) -> Result<StockEvent, CodecError> {
    let RecordedEvent { global_position: position, data, .. } = recorded;
    if data.schema_version != FLOW_SCHEMA_VERSION {
        return Err(CodecError::UnsupportedSchemaVersion { position, event_type: data.event_type, schema_version: data.schema_version });
    }
    let change = payload(position, &data, StockChange::decode_payload)?;
    Ok(StockEvent {
        command_fingerprint: fingerprint(&data),
        idempotency_key: data.idempotency_key,
        recorded_at_ms: data.recorded_at_ms,
        change,
    })
}

/// A flow event, keyed by the flow's stream and its version (the flow's own steps are never retried
/// under one key: the version check orders them).
pub fn encode_flow(event: &FlowEvent, version: u64, metadata: &EventMetadata) -> EventData {
    let key = format!("tally:flow:{version}");
    let facts = CommandFacts { key: &key, fingerprint: CommandFingerprint::Fnv64(0), recorded_at_ms: event.recorded_at_ms };
    envelope(event.change.event_type(), FLOW_SCHEMA_VERSION, facts, metadata, event.change.encode_payload())
}

/// Decodes a stored flow event.
pub fn decode_flow(recorded: RecordedEvent) -> Result<FlowEvent, CodecError> {
    let RecordedEvent { global_position: position, data, .. } = recorded;
    if data.schema_version != FLOW_SCHEMA_VERSION {
        return Err(CodecError::UnsupportedSchemaVersion { position, event_type: data.event_type, schema_version: data.schema_version });
    }
    let change = payload(position, &data, FlowChange::decode_payload)?;
    Ok(FlowEvent { recorded_at_ms: data.recorded_at_ms, change })
}

/// The platform's stream of tenants, `$tenants`: one `TenantRegistered` per tenant.
pub fn tenants_stream() -> StreamId {
    StreamId::new("$tenants").expect("a valid stream id")
}

const TENANT_EVENT_TYPE: &str = "tally.v1.TenantRegistered";

/// A tenant's registration, recorded at `recorded_at_ms`.
pub fn encode_tenant(tenant: &TenantId, recorded_at_ms: i64, metadata: &EventMetadata) -> EventData {
    let key = format!("tally:tenant:{tenant}");
    let facts = CommandFacts { key: &key, fingerprint: CommandFingerprint::Fnv64(0), recorded_at_ms };
    let payload = prost::Message::encode_to_vec(&tally_proto::v1::TenantRegistered { tenant_id: tenant.to_string() });
    envelope(TENANT_EVENT_TYPE, 1, facts, metadata, payload)
}

/// The tenant a stored registration names.
pub fn decode_tenant(recorded: RecordedEvent) -> Result<TenantId, CodecError> {
    let RecordedEvent { global_position: position, data, .. } = recorded;
    if data.event_type != TENANT_EVENT_TYPE {
        return Err(CodecError::UnknownEventType { position, event_type: data.event_type });
    }
    let undecodable = |reason: String| CodecError::Undecodable { position, event_type: TENANT_EVENT_TYPE.into(), reason };
    let registered =
        <tally_proto::v1::TenantRegistered as prost::Message>::decode(data.payload.as_slice()).map_err(|e| undecodable(e.to_string()))?;
    TenantId::parse(&registered.tenant_id).map_err(|e| undecodable(e.to_string()))
}

/// The stream counting a tenant's wallets: `"<tenant>/wallets"`, one `WalletAdmitted` per wallet opened.
pub fn wallets_stream(tenant: &TenantId) -> StreamId {
    StreamId::new(&format!("{tenant}/wallets")).expect("validated ids always make a valid stream id")
}

/// The event type counting one wallet on [`wallets_stream`].
pub const WALLET_ADMITTED_EVENT_TYPE: &str = "tally.v1.WalletAdmitted";

/// One wallet of a tenant counted, recorded at `recorded_at_ms` under the enrollment's metadata.
pub fn encode_wallet_admitted(wallet: &WalletId, recorded_at_ms: i64, metadata: &EventMetadata) -> EventData {
    let key = format!("tally:wallet:{wallet}");
    let facts = CommandFacts { key: &key, fingerprint: CommandFingerprint::Fnv64(0), recorded_at_ms };
    let payload = prost::Message::encode_to_vec(&tally_proto::v1::WalletAdmitted { wallet_id: wallet.to_string() });
    envelope(WALLET_ADMITTED_EVENT_TYPE, 1, facts, metadata, payload)
}

/// The log's stream of access keys, `$keys`.
pub fn keys_stream() -> StreamId {
    StreamId::new(KEYS_STREAM).expect("a valid stream id")
}

/// Schema version written for every key event today.
pub const KEY_SCHEMA_VERSION: u32 = 1;

/// A key event, recorded at `recorded_at_ms`.
pub fn encode_key(change: &KeyChange, recorded_at_ms: i64, metadata: &EventMetadata) -> EventData {
    let key = match change {
        KeyChange::Created(c) => format!("tally:key:{}:created", c.key_id),
        KeyChange::Revoked(r) => format!("tally:key:{}:revoked", r.key_id),
    };
    // No command made it: key events have no retries to tell apart.
    let facts = CommandFacts { key: &key, fingerprint: CommandFingerprint::Fnv64(0), recorded_at_ms };
    envelope(change.event_type(), KEY_SCHEMA_VERSION, facts, metadata, change.encode_payload())
}

/// A stored key event and when it was recorded.
pub fn decode_key(recorded: RecordedEvent) -> Result<(KeyChange, i64), CodecError> {
    let RecordedEvent { global_position: position, data, .. } = recorded;
    if data.schema_version != KEY_SCHEMA_VERSION {
        return Err(CodecError::UnsupportedSchemaVersion { position, event_type: data.event_type, schema_version: data.schema_version });
    }
    Ok((payload(position, &data, KeyChange::decode_payload)?, data.recorded_at_ms))
}

/// An event table's decoder (`Change::decode_payload`, `ProgramChange::decode_payload`).
type DecodePayload<C> = fn(&str, &[u8]) -> Option<Result<C, prost::DecodeError>>;

/// The payload of `data` through an event table's decoder.
fn payload<C>(position: u64, data: &EventData, decode: DecodePayload<C>) -> Result<C, CodecError> {
    let event_type = || data.event_type.clone();
    match decode(&data.event_type, &data.payload) {
        Some(Ok(change)) => Ok(change),
        Some(Err(e)) => Err(CodecError::Undecodable { position, event_type: event_type(), reason: e.to_string() }),
        None => Err(CodecError::UnknownEventType { position, event_type: event_type() }),
    }
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
    let payload = event.change.encode_payload();
    let facts = CommandFacts { key: &event.idempotency_key, fingerprint: event.command_fingerprint, recorded_at_ms: event.recorded_at_ms };
    envelope(event.change.event_type(), WALLET_SCHEMA_VERSION, facts, metadata, payload)
}

/// What every event carries of the command that produced it.
struct CommandFacts<'a> {
    key: &'a str,
    fingerprint: CommandFingerprint,
    recorded_at_ms: i64,
}

/// The envelope around an encoded payload, for any aggregate's events.
///
/// A digest goes in `command_digest` with 0 in the old 64-bit field: the log then holds no weak
/// fingerprint of a new command for anything to trust, and a build from before the digest, reading it,
/// refuses that command's retries as another payload's rather than answering them (it never applies
/// one twice). An old event's FNV-1a (a copy or re-encoding of one) goes back where it came from.
fn envelope(event_type: &str, schema_version: u32, facts: CommandFacts<'_>, metadata: &EventMetadata, payload: Vec<u8>) -> EventData {
    let (command_fingerprint, command_digest) = match facts.fingerprint {
        CommandFingerprint::Blake3(digest) => (0, Some(digest)),
        CommandFingerprint::Fnv64(fnv) => (fnv, None),
    };
    EventData {
        event_type: event_type.to_owned(),
        schema_version,
        recorded_at_ms: facts.recorded_at_ms,
        idempotency_key: facts.key.to_owned(),
        command_fingerprint,
        command_digest,
        metadata: metadata.clone(),
        payload,
    }
}

/// The fingerprint a stored event recorded: its digest when it has one (the only one compared then),
/// otherwise the 64-bit FNV-1a of an event written before the digest.
fn fingerprint(data: &EventData) -> CommandFingerprint {
    data.command_digest.map_or(CommandFingerprint::Fnv64(data.command_fingerprint), CommandFingerprint::Blake3)
}

/// The persisted name of version 1 of `WalletEnrolled` (the customer's reference in clear).
pub const ENROLLED_V1: &str = "tally.v1.WalletEnrolled";

/// The upcaster of `WalletEnrolled` (version 1) to `WalletEnrolledV2`: the reference the old event holds
/// in clear becomes the new one's `clear` customer data, so the domain knows one enrolment. Nothing
/// writes version 1 any more; its events stay in the log as written.
fn upcast_enrolled_v1(position: u64, data: &EventData) -> Result<Change, CodecError> {
    let v1 = <WalletEnrolled as prost::Message>::decode(data.payload.as_slice()).map_err(|e| CodecError::Undecodable {
        position,
        event_type: data.event_type.clone(),
        reason: e.to_string(),
    })?;
    let customer =
        (!v1.customer_ref.is_empty()).then_some(Customer::Clear(PersonalData { customer_ref: v1.customer_ref, ..Default::default() }));
    Ok(Change::Enrolled(WalletEnrolledV2 { tenant_id: v1.tenant_id, wallet_id: v1.wallet_id, customer }))
}

/// Decodes a stored wallet event, taking it apart without copying its strings.
pub fn decode(recorded: RecordedEvent) -> Result<Event, CodecError> {
    let RecordedEvent { global_position: position, data, .. } = recorded;
    if data.schema_version != WALLET_SCHEMA_VERSION {
        return Err(CodecError::UnsupportedSchemaVersion { position, event_type: data.event_type, schema_version: data.schema_version });
    }
    let change = match data.event_type.as_str() {
        ENROLLED_V1 => upcast_enrolled_v1(position, &data)?,
        _ => payload(position, &data, Change::decode_payload)?,
    };
    if let Change::Enrolled(WalletEnrolledV2 { customer: Some(Customer::Clear(_)), .. }) = &change
        && data.event_type != ENROLLED_V1
    {
        return Err(CodecError::Undecodable {
            position,
            event_type: data.event_type,
            reason: "customer data in clear, which only the upcaster of a version 1 enrolment makes".into(),
        });
    }
    Ok(Event {
        command_fingerprint: fingerprint(&data),
        idempotency_key: data.idempotency_key,
        recorded_at_ms: data.recorded_at_ms,
        change,
    })
}

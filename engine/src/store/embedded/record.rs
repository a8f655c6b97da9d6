//! The on-disk record framing of the embedded log and the envelope conversions.
//!
//! A record is one atomic append: `u32 magic | u32 length | u32 CRC-32C | LogRecord bytes`, all little
//! endian. The layout is documented in `proto/tally/v1/events.proto` so an auditor can read the files.

use prost::Message;
use tally_proto::v1::{EventEnvelope, LogRecord};

use crate::store::{EventData, EventMetadata, RecordedEvent, StreamId, chain, command_digest};

/// "TLY1" read as a little-endian u32.
pub(super) const MAGIC: u32 = u32::from_le_bytes(*b"TLY1");
pub(super) const HEADER_BYTES: usize = 12;

/// Starts a record at the end of `buf`: room for its header, which [`seal`] fills once the body (an
/// encoded `LogRecord`) follows it. Returns where the record starts.
pub(super) fn open_record(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_BYTES]);
    start
}

/// Writes the header of the record that starts at `start` and runs to the end of `buf`; returns its
/// length including the header.
pub(super) fn seal(buf: &mut [u8], start: usize) -> usize {
    let body_len = buf.len() - start - HEADER_BYTES;
    let crc = crc32c::crc32c(&buf[start + HEADER_BYTES..]);
    buf[start..start + 4].copy_from_slice(&MAGIC.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&u32::try_from(body_len).expect("records are bounded by APPEND_BYTES_MAX").to_le_bytes());
    buf[start + 8..start + HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    buf.len() - start
}

/// Appends one framed record of `body` (an encoded `LogRecord`) to `buf`; returns its length including
/// the header.
#[cfg(test)]
fn frame_body(buf: &mut Vec<u8>, body: &[u8]) -> usize {
    let start = open_record(buf);
    buf.extend_from_slice(body);
    seal(buf, start)
}

/// `EventEnvelope.stream_hash` (field 18) and `log_hash` (19) as prost writes them: key, length 32.
const STREAM_HASH_KEY: [u8; 3] = [0x92, 0x01, 0x20];
const LOG_HASH_KEY: [u8; 3] = [0x9a, 0x01, 0x20];
/// What the two link fields add to an envelope's encoding.
const LINK_FIELDS_BYTES: usize = 2 * (3 + 32);

/// Appends `envelope` (its hash fields empty) to `body`, an encoded `LogRecord` being built, linked by
/// `link` from its canonical bytes: the encoding prost gives the envelope with both links set (they are
/// its last fields), with the envelope encoded once.
pub(super) fn push_linked(body: &mut Vec<u8>, envelope: &EventEnvelope, link: impl FnOnce(&[u8]) -> chain::Links) {
    debug_assert!(envelope.stream_hash.is_empty() && envelope.log_hash.is_empty());
    let len = envelope.encoded_len();
    body.push(0x0a); // LogRecord.events, length-delimited
    prost::encoding::encode_varint((len + LINK_FIELDS_BYTES) as u64, body);
    let start = body.len();
    envelope.encode(body).expect("a Vec grows as needed");
    let links = link(&body[start..]);
    body.extend_from_slice(&STREAM_HASH_KEY);
    body.extend_from_slice(&links.stream);
    body.extend_from_slice(&LOG_HASH_KEY);
    body.extend_from_slice(&links.log);
}

/// What is at the start of a byte slice.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Frame<'a> {
    /// A whole record whose checksum matches; `len` includes the header.
    Valid { body: &'a [u8], len: usize },
    /// Fewer bytes than the header or the body needs.
    Incomplete,
    /// Bad magic or checksum.
    Invalid(&'static str),
}

pub(super) fn parse(bytes: &[u8]) -> Frame<'_> {
    if bytes.len() < HEADER_BYTES {
        return Frame::Incomplete;
    }
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if word(0) != MAGIC {
        return Frame::Invalid("bad record magic");
    }
    let len = word(4) as usize;
    let Some(body) = bytes.get(HEADER_BYTES..HEADER_BYTES + len) else {
        return Frame::Incomplete;
    };
    if crc32c::crc32c(body) != word(8) {
        return Frame::Invalid("record checksum mismatch");
    }
    Frame::Valid { body, len: HEADER_BYTES + len }
}

/// Whether a valid record starts anywhere in `bytes` (used to tell a torn tail from corruption).
pub(super) fn any_valid_frame(bytes: &[u8]) -> bool {
    let magic = MAGIC.to_le_bytes();
    bytes.windows(4).enumerate().any(|(i, w)| w == magic && matches!(parse(&bytes[i..]), Frame::Valid { .. }))
}

pub(in crate::store) fn into_envelope(stream: &StreamId, version: u64, position: u64, data: EventData) -> EventEnvelope {
    EventEnvelope {
        stream_id: stream.as_str().to_owned(),
        stream_version: version,
        global_position: position,
        event_type: data.event_type,
        schema_version: data.schema_version,
        recorded_at: Some(prost_types::Timestamp {
            seconds: data.recorded_at_ms.div_euclid(1000),
            nanos: i32::try_from(data.recorded_at_ms.rem_euclid(1000) * 1_000_000).expect("below 1e9"),
        }),
        idempotency_key: data.idempotency_key,
        command_fingerprint: data.command_fingerprint,
        command_digest: data.command_digest.map(Vec::from).unwrap_or_default(),
        causation_id: data.metadata.causation_id,
        correlation_id: data.metadata.correlation_id,
        traceparent: data.metadata.traceparent,
        tracestate: data.metadata.tracestate,
        principal: data.metadata.principal,
        principal_roles: data.metadata.principal_roles,
        staff_id: data.metadata.staff_id,
        payload: data.payload,
        stream_hash: Vec::new(),
        log_hash: Vec::new(),
    }
}

pub(in crate::store) fn from_envelope(envelope: EventEnvelope) -> Result<RecordedEvent, String> {
    let stream_id = StreamId::new(&envelope.stream_id).map_err(|e| e.to_string())?;
    let recorded_at_ms = envelope.recorded_at.map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
    let command_digest = command_digest(&envelope.command_digest)?;
    let links = chain::stored_links(&envelope.stream_hash, &envelope.log_hash)?;
    Ok(RecordedEvent {
        stream_id,
        stream_version: envelope.stream_version,
        global_position: envelope.global_position,
        data: EventData {
            event_type: envelope.event_type,
            schema_version: envelope.schema_version,
            recorded_at_ms,
            idempotency_key: envelope.idempotency_key,
            command_fingerprint: envelope.command_fingerprint,
            command_digest,
            metadata: EventMetadata {
                causation_id: envelope.causation_id,
                correlation_id: envelope.correlation_id,
                traceparent: envelope.traceparent,
                tracestate: envelope.tracestate,
                principal: envelope.principal,
                principal_roles: envelope.principal_roles,
                staff_id: envelope.staff_id,
            },
            payload: envelope.payload,
        },
        links,
    })
}

pub(super) fn decode(body: &[u8]) -> Result<LogRecord, String> {
    LogRecord::decode(body).map_err(|e| format!("undecodable record: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_damage_is_detected() {
        let record = LogRecord { events: vec![EventEnvelope { stream_id: "s".into(), stream_version: 1, ..Default::default() }] };
        let mut buf = Vec::new();
        let len = frame_body(&mut buf, &record.encode_to_vec());
        assert_eq!(len, buf.len());
        let Frame::Valid { body, len: parsed } = parse(&buf) else { panic!("valid frame expected") };
        assert_eq!(parsed, len);
        assert_eq!(decode(body).unwrap(), record);
        assert_eq!(parse(&buf[..len - 1]), Frame::Incomplete);
        let mut flipped = buf.clone();
        flipped[len - 1] ^= 0x40;
        assert_eq!(parse(&flipped), Frame::Invalid("record checksum mismatch"));
        assert!(any_valid_frame(&[&[0u8; 7][..], &buf].concat()));
        assert!(!any_valid_frame(&flipped));
    }

    #[test]
    fn a_linked_envelope_written_by_hand_is_what_prost_writes() {
        let stream = StreamId::new("t/wallet/d").unwrap();
        let mut heads = chain::Heads::default();
        let mut body = Vec::new();
        let mut expected = LogRecord::default();
        for (version, tag) in [(1, "a"), (2, "a rather longer payload to move the length past one varint byte".repeat(3).as_str())] {
            let envelope = into_envelope(&stream, version, version, crate::store::conformance::event(tag));
            push_linked(&mut body, &envelope, |canonical| heads.link_canonical(&stream, canonical));
            let mut linked = envelope.clone();
            chain::link(
                &mut linked,
                expected.events.last().map_or(&chain::GENESIS, |e| e.stream_hash.as_slice().try_into().unwrap()),
                &expected.events.last().map_or(chain::GENESIS, |e| e.log_hash.as_slice().try_into().unwrap()),
            );
            expected.events.push(linked);
        }
        assert_eq!(body, expected.encode_to_vec());
        assert_eq!(decode(&body).unwrap(), expected);
    }

    #[test]
    fn a_command_digest_is_sixteen_bytes_or_none() {
        let mut data = crate::store::conformance::event("d");
        let stream = StreamId::new("t/wallet/d").unwrap();
        for digest in [None, Some([0xa5; 16])] {
            data.command_digest = digest;
            let envelope = into_envelope(&stream, 1, 1, data.clone());
            assert_eq!(envelope.command_digest.len(), digest.map_or(0, |d| d.len()));
            assert_eq!(from_envelope(envelope).unwrap().data, data);
        }
        let mut envelope = into_envelope(&stream, 1, 1, data);
        envelope.command_digest.truncate(8);
        assert_eq!(from_envelope(envelope).unwrap_err(), "command digest of 8 bytes (expected 16, or none)");
    }
}

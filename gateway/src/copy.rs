//! `tally store copy`: moves a whole log between stores, keeping stream versions and global order.
//!
//! Resumable: the destination must be empty or hold a prefix of the source (checked at its last event);
//! copying continues after it. Appends go in source order, consecutive events of one stream together, each
//! with its exact expected version, a read batch at a time through `append_in_order` (so the destination
//! commits many appends per fsync or transaction), and each outcome must land at the source's positions —
//! anything else stops the copy with the position named. Nothing else may write to the destination
//! meanwhile. At the end both logs are read in full and their event counts and CRC-32C checksums compared.
//!
//! The keys that seal customers' personal data live beside the log, not in it: each enrolment's key is
//! kept in the destination before the enrolment is appended there (a wallet whose key the source erased
//! has none to copy), so a copied log opens every customer the source could.

use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use tally_engine::limits::{APPEND_BYTES_MAX, APPEND_EVENTS_MAX};
use tally_engine::store::{Append, EventStore, ExpectedVersion, RecordedEvent, StoreError, StreamId, append_bytes};

/// Events read from the source per round.
const COPY_READ_BATCH_EVENTS: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the destination is not a prefix of the source: at position {position} {reason}")]
    Diverged { position: u64, reason: String },
    #[error(
        "verification failed: source has {source_events} events (checksum {source_crc:08x}), destination {destination_events} ({destination_crc:08x})"
    )]
    Verification { source_events: u64, source_crc: u32, destination_events: u64, destination_crc: u32 },
}

/// What a copy did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CopyReport {
    /// Events already in the destination when the copy started (a resumed copy).
    pub resumed_after: u64,
    pub copied: u64,
    /// Personal data keys kept in the destination (its enrolments' in this run).
    pub keys: u64,
    pub total: u64,
    pub checksum: u32,
    pub seconds: f64,
}

fn same_event(a: &RecordedEvent, b: &RecordedEvent) -> bool {
    a.stream_id == b.stream_id && a.stream_version == b.stream_version && a.global_position == b.global_position && a.data == b.data
}

/// Where the source carries hash links, the destination — which linked the same events itself — must
/// have the same ones: otherwise the source was changed after it was written, and a copy would make the
/// change look intact.
async fn links_agree(source: &dyn EventStore, destination: &dyn EventStore) -> Result<(), CopyError> {
    let mut from = 1;
    loop {
        let (ours, theirs) =
            (source.read_all(from, COPY_READ_BATCH_EVENTS).await?, destination.read_all(from, COPY_READ_BATCH_EVENTS).await?);
        let Some(last) = ours.last() else { return Ok(()) };
        from = last.global_position + 1;
        if let Some((s, _)) = ours.iter().zip(&theirs).find(|(s, d)| s.links.is_some() && s.links != d.links) {
            return Err(CopyError::Diverged {
                position: s.global_position,
                reason: "the source's stored hash links do not match its contents: it was changed after it was written \
                         (tally audit verify --store SOURCE names where)"
                    .into(),
            });
        }
    }
}

/// Count and CRC-32C over every event in global order: its position, stream and version and every field
/// of its envelope (the command's key, fingerprint and digest included), so a copy that dropped or
/// changed any of them fails verification.
async fn checksum(store: &dyn EventStore) -> Result<(u64, u32), StoreError> {
    let (mut count, mut crc, mut from) = (0u64, 0u32, 1u64);
    loop {
        let events = store.read_all(from, COPY_READ_BATCH_EVENTS).await?;
        let Some(last) = events.last() else { return Ok((count, crc)) };
        from = last.global_position + 1;
        for e in &events {
            crc = event_checksum(crc, e);
            count += 1;
        }
    }
}

/// `crc` extended by one event. Every variable-length field goes in after its length, and the digest after
/// a byte saying whether there is one, so no two different events feed the same bytes.
fn event_checksum(mut crc: u32, e: &RecordedEvent) -> u32 {
    let mut bytes = |field: &[u8]| {
        crc = crc32c::crc32c_append(crc, &(field.len() as u64).to_le_bytes());
        crc = crc32c::crc32c_append(crc, field);
    };
    let d = &e.data;
    bytes(&e.global_position.to_le_bytes());
    bytes(e.stream_id.as_str().as_bytes());
    bytes(&e.stream_version.to_le_bytes());
    bytes(d.event_type.as_bytes());
    bytes(&d.schema_version.to_le_bytes());
    bytes(&d.recorded_at_ms.to_le_bytes());
    bytes(d.idempotency_key.as_bytes());
    bytes(&d.command_fingerprint.to_le_bytes());
    match &d.command_digest {
        None => bytes(&[0]),
        Some(digest) => bytes(&[&[1][..], digest].concat()),
    }
    let m = &d.metadata;
    for text in [&m.causation_id, &m.correlation_id, &m.traceparent, &m.tracestate, &m.principal, &m.principal_roles, &m.staff_id] {
        bytes(text.as_bytes());
    }
    bytes(&d.payload);
    crc
}

/// Consecutive events of one stream, each run one atomic append: cut where the stream changes or an
/// append would pass the store's limits.
fn runs(events: &[RecordedEvent]) -> Vec<&[RecordedEvent]> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, event) in events.iter().enumerate() {
        let size = append_bytes(&event.data);
        if i > start && (event.stream_id != events[start].stream_id || i - start == APPEND_EVENTS_MAX || bytes + size > APPEND_BYTES_MAX) {
            runs.push(&events[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < events.len() {
        runs.push(&events[start..]);
    }
    runs
}

pub async fn copy(source: Arc<dyn EventStore>, destination: Arc<dyn EventStore>, progress: bool) -> Result<CopyReport, CopyError> {
    let started = Instant::now();
    let total = *source.head().borrow();
    let resumed_after = *destination.head().borrow();
    if resumed_after > 0 {
        let theirs = destination.read_all(resumed_after, 1).await?;
        let ours = source.read_all(resumed_after, 1).await?;
        match (theirs.first(), ours.first()) {
            (Some(d), Some(s)) if same_event(d, s) => {}
            (_, None) => return Err(CopyError::Diverged { position: resumed_after, reason: "the source has no such event".into() }),
            _ => return Err(CopyError::Diverged { position: resumed_after, reason: "the events differ".into() }),
        }
    }
    let bar = if progress { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events  {per_sec}  eta {eta}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(resumed_after);
    let mut next = resumed_after + 1;
    let (mut copied, mut keys) = (0u64, 0u64);
    loop {
        let events = source.read_all(next, COPY_READ_BATCH_EVENTS).await?;
        if events.is_empty() {
            break;
        }
        keys += copy_keys(source.as_ref(), destination.as_ref(), &events).await?;
        let runs = runs(&events);
        let appends = runs
            .iter()
            .map(|run| Append {
                stream: run[0].stream_id.clone(),
                expected: ExpectedVersion::Exact(run[0].stream_version - 1),
                events: run.iter().map(|e| e.data.clone()).collect(),
            })
            .collect();
        let outcomes = destination.append_in_order(appends).await;
        for (run, outcome) in runs.iter().zip(outcomes) {
            let first = &run[0];
            let outcome = outcome?;
            if outcome.first_position != first.global_position {
                return Err(CopyError::Diverged {
                    position: first.global_position,
                    reason: format!("the destination placed it at position {}", outcome.first_position),
                });
            }
            copied += run.len() as u64;
        }
        bar.inc(events.len() as u64);
        next = events.last().map_or(next, |e| e.global_position + 1);
    }
    bar.finish_and_clear();
    let (source_events, source_crc) = checksum(source.as_ref()).await?;
    let (destination_events, destination_crc) = checksum(destination.as_ref()).await?;
    if (source_events, source_crc) != (destination_events, destination_crc) {
        return Err(CopyError::Verification { source_events, source_crc, destination_events, destination_crc });
    }
    links_agree(source.as_ref(), destination.as_ref()).await?;
    Ok(CopyReport { resumed_after, copied, keys, total: source_events, checksum: source_crc, seconds: started.elapsed().as_secs_f64() })
}

/// Keeps in `destination` the personal data keys `source` holds for the enrolments among `events` (and
/// the identifier lookup keys of the tenants whose identifiers they claim: every lookup would change
/// without them), and erases there the keys of the erasures among them (a copy resumed after the source
/// erased a customer whose key the first run copied); a destination holding another key stops the copy.
async fn copy_keys(source: &dyn EventStore, destination: &dyn EventStore, events: &[RecordedEvent]) -> Result<u64, CopyError> {
    for erased in events.iter().filter(|e| e.data.event_type == ERASED) {
        destination.erase_personal_key(&erased.stream_id).await?;
    }
    let lookup_keys: std::collections::BTreeSet<StreamId> = events
        .iter()
        .filter(|e| e.data.event_type == IDENTIFIER_CLAIMED)
        .filter_map(|e| tally_engine::codec::identifier_key_subject_of(e.stream_id.as_str()))
        .collect();
    let streams: Vec<StreamId> =
        events.iter().filter(|e| e.data.event_type == ENROLLED_V2).map(|e| e.stream_id.clone()).chain(lookup_keys).collect();
    if streams.is_empty() {
        return Ok(0);
    }
    let mut kept = 0;
    for (stream, key) in streams.iter().zip(source.personal_keys(&streams).await?) {
        let Some(key) = key else { continue };
        if destination.keep_personal_key(stream, &key).await? != key {
            let position = events.iter().find(|e| e.stream_id == *stream).map_or(0, |e| e.global_position);
            return Err(CopyError::Diverged { position, reason: format!("the destination holds another personal data key for {stream}") });
        }
        kept += 1;
    }
    Ok(kept)
}

/// The persisted name of the enrolment whose customer data is sealed under a key.
const ENROLLED_V2: &str = "tally.v1.WalletEnrolledV2";

/// The persisted name of an identifier's claim (`codec::IdentifierClaim`).
const IDENTIFIER_CLAIMED: &str = "tally.v1.IdentifierClaimed";

/// The persisted name of an erasure.
const ERASED: &str = "tally.v1.CustomerErased";

#[cfg(test)]
mod tests {
    use tally_engine::store::{EventData, EventMetadata, RecordedEvent, StreamId};

    use super::event_checksum;

    #[test]
    fn the_checksum_covers_every_field_the_digest_included() {
        let metadata = EventMetadata { causation_id: "cause".into(), correlation_id: "corr".into(), ..EventMetadata::default() };
        let base = RecordedEvent {
            stream_id: StreamId::new("t/wallet/c-1").unwrap(),
            stream_version: 1,
            global_position: 1,
            data: EventData {
                event_type: "tally.v1.PointsEarned".into(),
                schema_version: 1,
                recorded_at_ms: 1_767_225_600_000,
                idempotency_key: "o-1".into(),
                command_fingerprint: 0,
                command_digest: Some([7; 16]),
                metadata,
                payload: vec![1, 2, 3],
            },
            links: None,
        };
        let sum = |e: &RecordedEvent| event_checksum(0, e);
        type Change = fn(&mut RecordedEvent);
        fn flip(e: &mut RecordedEvent, byte: usize) {
            e.data.command_digest.as_mut().expect("a digest")[byte] ^= 1;
        }
        let changed: [(&str, Change); 12] = [
            ("digest dropped", |e| e.data.command_digest = None),
            ("digest's first byte", |e| flip(e, 0)),
            ("digest's last byte", |e| flip(e, 15)),
            ("fingerprint", |e| e.data.command_fingerprint ^= 1),
            ("key", |e| e.data.idempotency_key.push('x')),
            ("recorded at", |e| e.data.recorded_at_ms += 1),
            ("schema version", |e| e.data.schema_version += 1),
            ("metadata", |e| e.data.metadata.tracestate.push('x')),
            ("principal", |e| e.data.metadata.principal.push('x')),
            ("staff", |e| e.data.metadata.staff_id.push('x')),
            ("payload", |e| e.data.payload.push(0)),
            ("version", |e| e.stream_version += 1),
        ];
        for (what, change) in changed {
            let mut other = base.clone();
            change(&mut other);
            assert_ne!(sum(&other), sum(&base), "{what}");
        }
        // A field's bytes moved into the next one is another event, not the same bytes.
        let mut shifted = base.clone();
        shifted.data.metadata.causation_id = "caus".into();
        shifted.data.metadata.correlation_id = "ecorr".into();
        assert_ne!(sum(&shifted), sum(&base));
    }
}

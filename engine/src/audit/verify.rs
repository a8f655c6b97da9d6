//! Checking the log against its hash chains (ADR 0011): every event's links are computed again from
//! the log's own contents, in position order, and compared with the links stored beside it. The first
//! disagreement is named — position, stream and version — and the check stops there: what follows a
//! broken link cannot be trusted either. Events that carry no links (written before the chains) are
//! linked all the same, so the computed head covers the whole log, and a signed checkpoint of it proves
//! even those were not changed since.

use std::collections::HashMap;

use crate::limits::RECOVERY_READ_BATCH_EVENTS;
use crate::store::chain::{self, GENESIS, Hash};
use crate::store::{EventStore, RecordedEvent, StoreError, StreamId};

/// What a check covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Events checked (the whole log, or the stream).
    pub events: u64,
    /// Of them, events whose stored links were compared.
    pub linked: u64,
    /// The last position checked and the log chain's link there (for a whole log).
    pub head: Option<(u64, Hash)>,
    /// The stream chain's last link (for one stream), and the log position of the event it belongs to.
    pub stream_head: Option<Hash>,
    pub stream_head_position: u64,
    /// The log chain's link at the position asked for ([`verify_log_at`]), if the log reaches it.
    pub link_at: Option<Hash>,
}

/// The first place the log disagrees with its chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    pub position: u64,
    /// Empty when the position itself is missing.
    pub stream: String,
    pub stream_version: u64,
    pub reason: String,
}

impl std::fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.stream.is_empty() {
            write!(f, "position {}: {}", self.position, self.reason)
        } else {
            write!(f, "position {} ({} version {}): {}", self.position, self.stream, self.stream_version, self.reason)
        }
    }
}

/// A check's result: the log is intact as far as it goes, or the first broken link (with what was
/// verified before it).
pub type Verdict = Result<Verified, (BrokenLink, Verified)>;

/// Checks the whole log. `progress` hears the last position checked after every batch.
pub async fn verify_log(store: &dyn EventStore, progress: impl FnMut(u64)) -> Result<Verdict, StoreError> {
    verify_log_at(store, None, progress).await
}

/// [`verify_log`], noting the log chain's link at position `at` (a checkpoint's).
pub async fn verify_log_at(store: &dyn EventStore, at: Option<u64>, mut progress: impl FnMut(u64)) -> Result<Verdict, StoreError> {
    let mut verified = Verified::default();
    let (mut links, mut versions, mut log) = (HashMap::<StreamId, Hash>::new(), HashMap::<StreamId, u64>::new(), GENESIS);
    loop {
        let events = store.read_all(verified.events + 1, RECOVERY_READ_BATCH_EVENTS).await?;
        let read = events.len();
        for event in events {
            let expected_position = verified.events + 1;
            let broken = |reason: String| BrokenLink {
                position: expected_position,
                stream: event.stream_id.as_str().to_owned(),
                stream_version: event.stream_version,
                reason,
            };
            if event.global_position != expected_position {
                let reason = format!("missing: the log goes on at position {}", event.global_position);
                return Ok(Err((BrokenLink { stream: String::new(), stream_version: 0, ..broken(reason) }, verified)));
            }
            let version = versions.get(&event.stream_id).copied().unwrap_or(0) + 1;
            if event.stream_version != version {
                return Ok(Err((broken(format!("the stream's version {version} was expected here")), verified)));
            }
            let stream_link = chain::stream_link(links.get(&event.stream_id).unwrap_or(&GENESIS), &chain::canonical(&event));
            let log_link = chain::log_link(&log, &stream_link);
            match event.links {
                Some(stored) => {
                    if let Err(reason) = compare(stored, stream_link, log_link) {
                        return Ok(Err((broken(reason.into()), verified)));
                    }
                    verified.linked += 1;
                }
                // Every chaining writer links every event it writes (PostgreSQL also links, in place,
                // what an older node wrote meanwhile), so an event without links after one with them had
                // its links taken away.
                None if verified.linked > 0 => return Ok(Err((broken(STRIPPED.into()), verified))),
                None => {}
            }
            versions.insert(event.stream_id.clone(), version);
            links.insert(event.stream_id, stream_link);
            log = log_link;
            if at == Some(expected_position) {
                verified.link_at = Some(log);
            }
            verified.events = expected_position;
            verified.head = Some((expected_position, log));
        }
        progress(verified.events);
        if read < RECOVERY_READ_BATCH_EVENTS {
            // The log's own record of its last position (PostgreSQL's head row, the embedded index):
            // events cut off its end leave it behind.
            let head = *store.head().borrow();
            if head > verified.events {
                let link = BrokenLink {
                    position: verified.events + 1,
                    stream: String::new(),
                    stream_version: 0,
                    reason: format!("missing: the log's head is at position {head}, its events end at {}", verified.events),
                };
                return Ok(Err((link, verified)));
            }
            return Ok(Ok(verified));
        }
    }
}

/// Checks one stream's chain (its log links need the whole log: `verify_log`).
pub async fn verify_stream(store: &dyn EventStore, stream: &StreamId) -> Result<Verdict, StoreError> {
    let mut verified = Verified::default();
    let mut link = GENESIS;
    loop {
        let events = store.read_stream(stream, verified.events + 1, RECOVERY_READ_BATCH_EVENTS).await?;
        let read = events.len();
        for event in events {
            let version = verified.events + 1;
            let broken = |reason: String| BrokenLink {
                position: event.global_position,
                stream: stream.as_str().to_owned(),
                stream_version: version,
                reason,
            };
            if event.stream_version != version {
                return Ok(Err((broken(format!("missing: the stream goes on at version {}", event.stream_version)), verified)));
            }
            let stream_link = chain::stream_link(&link, &chain::canonical(&event));
            match event.links {
                Some(stored) if stored.stream != stream_link => return Ok(Err((broken(STREAM_MISMATCH.into()), verified))),
                None if verified.linked > 0 => return Ok(Err((broken(STRIPPED.into()), verified))),
                _ => {}
            }
            verified.linked += u64::from(event.links.is_some());
            link = stream_link;
            verified.events = version;
            verified.stream_head = Some(link);
            verified.stream_head_position = event.global_position;
        }
        if read < RECOVERY_READ_BATCH_EVENTS {
            return Ok(Ok(verified));
        }
    }
}

const STREAM_MISMATCH: &str = "its stream hash does not match: the event, or an earlier event of its stream, was changed";
const STRIPPED: &str = "it carries no hash links though events before it do: its links were taken away";
const LOG_MISMATCH: &str = "its log hash does not match: an event before it in the log was changed, removed or reordered";

fn compare(stored: chain::Links, stream_link: Hash, log_link: Hash) -> Result<(), &'static str> {
    if stored.stream != stream_link {
        return Err(STREAM_MISMATCH);
    }
    if stored.log != log_link {
        return Err(LOG_MISMATCH);
    }
    Ok(())
}

/// The stream links of `events` (one stream's, from its first), computed: what a verifier expects.
pub fn expected_links(events: &[RecordedEvent]) -> Vec<Hash> {
    let mut link = GENESIS;
    events
        .iter()
        .map(|event| {
            link = chain::stream_link(&link, &chain::canonical(event));
            link
        })
        .collect()
}

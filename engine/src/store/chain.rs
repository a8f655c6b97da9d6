//! The hash chains that make the log tamper-evident (ADR 0011, proto/README.md "The hash chains").
//!
//! Every event is linked twice: into its stream (`stream_hash`, over the stream's previous hash and the
//! event's canonical bytes) and into the global log (`log_hash`, over the previous position's hash and
//! the event's stream hash). The canonical bytes are the event's `tally.v1.EventEnvelope` encoded without
//! the two hash fields — fields in number order, zero values left out, as prost writes and as protobuf's
//! deterministic serialisation writes in any language — so anyone holding the `.proto` can recompute them.
//!
//! Events written before the chains carry no hashes; their links are computed all the same (the chain
//! runs from position 1), and the first stored hash after them chains onto the computed ones. Every
//! writer links events in the order it assigns positions, so the links depend only on what was written
//! where: a copy of a log to another backend chains to the same hashes.

use prost::Message;
use sha2::{Digest, Sha256};
use tally_proto::v1::EventEnvelope;

use super::embedded::record::into_envelope;
use super::{RecordedEvent, StreamId};

/// A link of either chain: SHA-256.
pub type Hash = [u8; 32];

/// What a chain starts from: the "previous hash" of a stream's first event and of position 1.
pub const GENESIS: Hash = [0; 32];

const STREAM_TAG: &[u8] = b"tally.stream.v1";
const LOG_TAG: &[u8] = b"tally.log.v1";

/// An event's two links, as stored beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Links {
    pub stream: Hash,
    pub log: Hash,
}

/// The stream link of an event whose canonical bytes are `canonical`, after `previous`.
pub fn stream_link(previous: &Hash, canonical: &[u8]) -> Hash {
    Sha256::new().chain_update(STREAM_TAG).chain_update(previous).chain_update(canonical).finalize().into()
}

/// The log link of an event whose stream link is `stream`, after the log's `previous`.
pub fn log_link(previous: &Hash, stream: &Hash) -> Hash {
    Sha256::new().chain_update(LOG_TAG).chain_update(previous).chain_update(stream).finalize().into()
}

/// The envelope's canonical bytes: its encoding without the hash fields.
pub fn canonical_envelope(envelope: &EventEnvelope) -> Vec<u8> {
    if envelope.stream_hash.is_empty() && envelope.log_hash.is_empty() {
        return envelope.encode_to_vec();
    }
    EventEnvelope { stream_hash: Vec::new(), log_hash: Vec::new(), ..envelope.clone() }.encode_to_vec()
}

/// A recorded event's canonical bytes, whichever backend it came from.
pub fn canonical(event: &RecordedEvent) -> Vec<u8> {
    let envelope = into_envelope(&event.stream_id, event.stream_version, event.global_position, event.data.clone());
    envelope.encode_to_vec()
}

/// Links `envelope` (whose hash fields are empty) after its stream's `previous` and the log's, and
/// stores the links in it.
pub fn link(envelope: &mut EventEnvelope, previous_in_stream: &Hash, previous_in_log: &Hash) -> Links {
    debug_assert!(envelope.stream_hash.is_empty() && envelope.log_hash.is_empty());
    let stream = stream_link(previous_in_stream, &envelope.encode_to_vec());
    let log = log_link(previous_in_log, &stream);
    envelope.stream_hash = stream.to_vec();
    envelope.log_hash = log.to_vec();
    Links { stream, log }
}

/// The links an envelope carries: none (written before the chains), or both, 32 bytes each.
pub fn stored_links(stream_hash: &[u8], log_hash: &[u8]) -> Result<Option<Links>, String> {
    match (stream_hash.len(), log_hash.len()) {
        (0, 0) => Ok(None),
        (32, 32) => {
            Ok(Some(Links { stream: stream_hash.try_into().expect("length checked"), log: log_hash.try_into().expect("length checked") }))
        }
        (s, l) => Err(format!("hash links of {s} and {l} bytes (expected 32 and 32, or none)")),
    }
}

/// The chains' heads as a writer carries them: each stream's last link and the log's.
#[derive(Debug, Clone, Default)]
pub struct Heads {
    pub streams: crate::FastMap<StreamId, Hash>,
    pub log: Option<Hash>,
}

impl Heads {
    /// Follows one event as read back: its `stored` links, or for an event written before the chains the
    /// links computed from its `canonical` bytes. Returns its links.
    pub fn follow(&mut self, stream: &StreamId, stored: Option<Links>, canonical: impl FnOnce() -> Vec<u8>) -> Links {
        let links = stored.unwrap_or_else(|| {
            let stream_hash = stream_link(self.stream(stream), &canonical());
            Links { stream: stream_hash, log: log_link(&self.log.unwrap_or(GENESIS), &stream_hash) }
        });
        self.streams.insert(stream.clone(), links.stream);
        self.log = Some(links.log);
        links
    }

    /// [`Heads::follow`] for an event as a backend returns it.
    pub fn follow_recorded(&mut self, event: &RecordedEvent) -> Links {
        self.follow(&event.stream_id, event.links, || canonical(event))
    }

    /// Links a new event and moves the heads on.
    pub fn link(&mut self, stream: &StreamId, envelope: &mut EventEnvelope) -> Links {
        let links = link(envelope, self.stream(stream), &self.log.unwrap_or(GENESIS));
        self.streams.insert(stream.clone(), links.stream);
        self.log = Some(links.log);
        links
    }

    /// Links a new event given its canonical bytes, and moves the heads on.
    pub fn link_canonical(&mut self, stream: &StreamId, canonical: &[u8]) -> Links {
        let stream_hash = stream_link(self.stream(stream), canonical);
        let links = Links { stream: stream_hash, log: log_link(&self.log.unwrap_or(GENESIS), &stream_hash) };
        match self.streams.get_mut(stream) {
            Some(head) => *head = links.stream,
            None => _ = self.streams.insert(stream.clone(), links.stream),
        }
        self.log = Some(links.log);
        links
    }

    fn stream(&self, stream: &StreamId) -> &Hash {
        self.streams.get(stream).unwrap_or(&GENESIS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash of a known input, so the algorithm documented in proto/README.md (and the Python
    /// verifier) can be checked against it: SHA-256("tally.stream.v1" ‖ 32 zero bytes ‖ "abc").
    #[test]
    fn links_are_sha256_over_the_tag_the_previous_link_and_the_bytes() {
        let hex = |h: Hash| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let mut input = b"tally.stream.v1".to_vec();
        input.extend_from_slice(&[0; 32]);
        input.extend_from_slice(b"abc");
        assert_eq!(stream_link(&GENESIS, b"abc"), <[u8; 32]>::from(Sha256::digest(&input)));
        assert_eq!(hex(log_link(&GENESIS, &GENESIS)).len(), 64);
        assert_ne!(log_link(&GENESIS, &stream_link(&GENESIS, b"abc")), stream_link(&GENESIS, b"abc"), "the tags keep them apart");
    }

    #[test]
    fn stored_links_are_both_or_neither() {
        assert_eq!(stored_links(&[], &[]), Ok(None));
        assert!(stored_links(&[1; 32], &[2; 32]).unwrap().is_some());
        assert_eq!(stored_links(&[1; 32], &[]).unwrap_err(), "hash links of 32 and 0 bytes (expected 32 and 32, or none)");
    }
}

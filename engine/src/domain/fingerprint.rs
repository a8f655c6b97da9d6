//! A command's fingerprint: BLAKE3 over a fixed, length-prefixed layout of its payload, the first 128
//! bits kept (issue 15 item 18, ADR 0007 §6).
//!
//! It is persisted in every event's envelope, so the layout is a permanent format like the events: the
//! bytes fed for each command kind must never change. `std::hash` makes no such promise, hence our own.
//! Events written before the digest recorded a 64-bit FNV-1a over the same layout; it is still computed,
//! only to compare with the receipts those events left (a retry of an old command keeps its answer).

use serde::{Deserialize, Serialize};

use crate::limits::COMMAND_DIGEST_BYTES;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// What a receipt recorded of the payload of the command that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandFingerprint {
    /// What events written before the 128-bit digest recorded: FNV-1a 64 over the layout. A crafted
    /// payload can collide with it, so nothing new records it; it is only compared.
    Fnv64(u64),
    /// BLAKE3 over the layout, its first 16 bytes: what every new event records.
    Blake3([u8; COMMAND_DIGEST_BYTES]),
}

/// The layout of one command's payload, fed field by field: a kind byte, then each field (strings
/// prefixed with their length, integers little endian).
#[derive(Debug, Clone)]
pub(crate) struct Layout(Vec<u8>);

impl Layout {
    pub(crate) fn new(kind: u8) -> Self {
        Self(vec![kind])
    }

    pub(crate) fn str(self, value: &str) -> Self {
        let mut layout = self.u64(value.len() as u64);
        layout.0.extend_from_slice(value.as_bytes());
        layout
    }

    pub(crate) fn bytes(self, value: &[u8]) -> Self {
        let mut layout = self.u64(value.len() as u64);
        layout.0.extend_from_slice(value);
        layout
    }

    pub(crate) fn u64(mut self, value: u64) -> Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// A field added to a command after its layout was fixed: nothing while it holds its default, so a
    /// command that does not use it keeps the fingerprint it always had.
    pub(crate) fn u64_unless_zero(self, value: u64) -> Self {
        if value == 0 { self } else { self.u64(value) }
    }

    pub(crate) fn i64(mut self, value: i64) -> Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// What a new event records: BLAKE3 of the layout, truncated to 128 bits.
    pub(crate) fn fingerprint(&self) -> CommandFingerprint {
        let hash = blake3::hash(&self.0);
        let mut digest = [0; COMMAND_DIGEST_BYTES];
        digest.copy_from_slice(&hash.as_bytes()[..COMMAND_DIGEST_BYTES]);
        CommandFingerprint::Blake3(digest)
    }

    /// What an event written before the digest recorded: FNV-1a 64 of the layout.
    pub(crate) fn legacy_fingerprint(&self) -> CommandFingerprint {
        let fnv = self.0.iter().fold(FNV_OFFSET_BASIS, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME));
        CommandFingerprint::Fnv64(fnv)
    }

    /// Whether `recorded` (a receipt's) is this payload's, by whichever function recorded it: all 128
    /// bits of a digest, or the 64 bits an old event kept.
    pub(crate) fn matches(&self, recorded: &CommandFingerprint) -> bool {
        match recorded {
            CommandFingerprint::Blake3(_) => self.fingerprint() == *recorded,
            CommandFingerprint::Fnv64(_) => self.legacy_fingerprint() == *recorded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CommandFingerprint, Layout};

    fn digest(hex: &str) -> CommandFingerprint {
        let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        CommandFingerprint::Blake3(bytes.try_into().unwrap())
    }

    #[test]
    fn layout_is_stable() {
        // Golden values: if these change, every stored fingerprint stops matching its retries.
        assert_eq!(Layout::new(1).legacy_fingerprint(), CommandFingerprint::Fnv64(0xaf63_bc4c_8601_b62c));
        // BLAKE3 of the single byte 0x01, its first 16 bytes (the reference implementation's value).
        assert_eq!(Layout::new(1).fingerprint(), digest("48fc721fbbc172e0925fa27af1671de2"));
        let ab_c = Layout::new(2).str("ab").str("c");
        let a_bc = Layout::new(2).str("a").str("bc");
        assert_ne!(ab_c.fingerprint(), a_bc.fingerprint());
        assert_ne!(ab_c.legacy_fingerprint(), a_bc.legacy_fingerprint());
    }

    #[test]
    fn a_recorded_fingerprint_is_compared_by_the_function_that_recorded_it() {
        let layout = Layout::new(2).str("order-1").i64(-5);
        assert!(layout.matches(&layout.fingerprint()));
        assert!(layout.matches(&layout.legacy_fingerprint()));
        let other = Layout::new(2).str("order-1").i64(-6);
        assert!(!other.matches(&layout.fingerprint()));
        assert!(!other.matches(&layout.legacy_fingerprint()));
        // Every bit of the digest counts: one flipped in either half is another payload's.
        let CommandFingerprint::Blake3(digest) = layout.fingerprint() else { panic!("new fingerprints are digests") };
        for byte in [0, 7, 8, 15] {
            let mut forged = digest;
            forged[byte] ^= 0x01;
            assert!(!layout.matches(&CommandFingerprint::Blake3(forged)), "byte {byte}");
        }
    }
}

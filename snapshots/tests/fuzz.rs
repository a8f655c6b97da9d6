//! Fuzzing the snapshot format without a nightly toolchain (issue 15): random bytes, and random bodies
//! behind a header whose checksum matches (so the decoder itself is reached), give a state or an
//! error — never a panic. A long run: `PROPTEST_CASES=1000000 cargo test --release -p tally-snapshots --test fuzz`.

use proptest::prelude::*;
use tally_snapshots::format::{self, FORMAT_VERSION};

/// `body` behind a well-formed header of the current format, checksum included.
fn framed(version: u64, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    bytes.extend_from_slice(body);
    bytes
}

proptest! {
    #[test]
    fn random_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = format::decode(&bytes);
    }

    #[test]
    fn random_bodies_behind_a_good_header_decode_or_are_refused(version in 0u64..10, body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = format::decode(&framed(version, &body));
    }

    #[test]
    fn a_real_snapshot_with_a_byte_changed_decodes_or_is_refused(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let good = format::encode(&tally_engine::domain::WalletState::default());
        let mut body = good[14..].to_vec();
        if !body.is_empty() {
            let i = at.index(body.len());
            body[i] = byte;
        }
        let _ = format::decode(&framed(0, &body));
    }
}

//! The snapshot encoding: `u16 format version | u64 stream version | u32 CRC-32C of the body | body`,
//! little endian, the body being the postcard encoding of `WalletState`.
//!
//! Bump [`FORMAT_VERSION`] whenever `WalletState`'s shape changes: every older snapshot is then ignored
//! and rebuilt lazily from the log. `tests/golden/` holds the bytes of each version so an accidental
//! change fails a test.

use tally_engine::domain::WalletState;

/// 2: wallets remember orders (counts, refunded amounts), capped rules' usage (EarnForOrder), open POS
/// holds and purchased points. 3: lots of points (with their expiry and held points), holds' lots, debt,
/// expired points, pending points, qualifying points, the tier and stamp cards. 4: retention — receipts
/// and sources carry their time (`recorded_at_ms`, `refundable_until_ms`) and the state when it last
/// forgot the old ones (`swept_at_ms`). 5: a receipt's fingerprint is a `CommandFingerprint` — the
/// 128-bit BLAKE3 digest new events record, or an old event's 64-bit FNV-1a (issue 15 item 18).
/// 6: the customer's sealed personal data and whether it was erased (`customer_sealed`,
/// `customer_erased`; issue 19 item 4). 7: catalogue rewards redeemed per reward (`rewards_redeemed`,
/// for per-customer limits) and recent catalogue redemptions (`catalogue_redemptions`, for their
/// cancellation; issue 20). 8: transfers out in the last 24 hours (`transfers_out`, for the program's
/// daily transfer cap; issue 20 item 3). 9: the identifiers a wallet can be found by (`identifiers`;
/// issue 20 item 6) and the wallet that referred the customer (`referred_by`; item 4). 10: whether the
/// customer's referral was converted by a qualifying order (`referral_converted`; item 4).
pub const FORMAT_VERSION: u16 = 10;
const HEADER_BYTES: usize = 2 + 8 + 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("snapshot of {0} bytes is shorter than its header")]
    Truncated(usize),
    #[error("unknown snapshot format version {0} (this build reads {FORMAT_VERSION})")]
    UnknownVersion(u16),
    #[error("snapshot checksum mismatch")]
    Checksum,
    #[error("snapshot body does not decode: {0}")]
    Decode(String),
    #[error("snapshot header says version {header} but the state is at version {state}")]
    VersionMismatch { header: u64, state: u64 },
}

pub fn encode(state: &WalletState) -> Vec<u8> {
    let body = postcard::to_stdvec(state).expect("wallet state always serializes");
    let mut bytes = Vec::with_capacity(HEADER_BYTES + body.len());
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&state.version.to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

pub fn decode(bytes: &[u8]) -> Result<WalletState, FormatError> {
    if bytes.len() < HEADER_BYTES {
        return Err(FormatError::Truncated(bytes.len()));
    }
    let version = u16::from_le_bytes([bytes[0], bytes[1]]);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnknownVersion(version));
    }
    let header_version = u64::from_le_bytes(bytes[2..10].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[10..14].try_into().expect("4 bytes"));
    let body = &bytes[HEADER_BYTES..];
    if crc32c::crc32c(body) != crc {
        return Err(FormatError::Checksum);
    }
    let state: WalletState = postcard::from_bytes(body).map_err(|e| FormatError::Decode(e.to_string()))?;
    if state.version != header_version {
        return Err(FormatError::VersionMismatch { header: header_version, state: state.version });
    }
    Ok(state)
}

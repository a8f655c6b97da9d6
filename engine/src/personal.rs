//! Customers' personal data, sealed under a key of each wallet's own that the log never holds
//! (crypto-shredding): erasing the key erases the data, while every event, hash and balance stays as it
//! was. The algorithm is `SealedPersonalData`'s in `proto/tally/v1/events.proto`: AES-256-GCM-SIV, an
//! all-zero nonce, and the wallet's stream id in the associated data. Deterministic on purpose: the same
//! data sealed twice gives the same bytes, so a retried `Enroll` is recognised by its fingerprint over
//! the sealed bytes and nothing of the data is in the log in clear. The keys live in the store, beside
//! the log (`EventStore::personal_keys`).

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use prost::Message;
use tally_proto::v1::{PersonalData, SealedPersonalData};

use crate::domain::WalletState;
use crate::store::PersonalKey;

/// `SealedPersonalData.algorithm` of AES-256-GCM-SIV with the nonce and associated data above.
pub const ALGORITHM_AES_256_GCM_SIV: u32 = 1;

/// What the associated data starts with, before the stream id.
const AAD_PREFIX: &[u8] = b"tally.personal.v1\n";

/// Whether a wallet's state holds sealed customer data that only its key opens.
pub fn needs_key(state: &WalletState) -> bool {
    !state.customer_erased && !state.customer_sealed.is_empty()
}

/// The customer's reference a wallet in `state` (of stream `subject`) may show, and whether its data
/// is erased: sealed data opened with `key` (none left: erased, the event perhaps still on its way), a
/// version 1 enrolment's reference as recorded, nothing once erased. Sealed data that does not open
/// under the wallet's key is an error, never shown as empty.
pub fn shown_customer(state: &WalletState, subject: &str, key: Option<&PersonalKey>) -> Result<(String, bool), OpenError> {
    if state.customer_erased {
        return Ok((String::new(), true));
    }
    if state.customer_sealed.is_empty() {
        return Ok((state.customer_ref.clone(), false));
    }
    let sealed = SealedPersonalData::decode(state.customer_sealed.as_slice()).map_err(|e| OpenError::Undecodable(e.to_string()))?;
    match key {
        None => Ok((String::new(), true)),
        Some(key) => Ok((open(key, subject, &sealed)?.customer_ref, false)),
    }
}

/// Why sealed data could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("sealed with algorithm {0}, which this build does not know")]
    UnknownAlgorithm(u32),
    /// The bytes were altered, belong to another wallet, or were sealed under another key.
    #[error("the sealed personal data does not open under this wallet's key")]
    Forged,
    #[error("the personal data does not decode: {0}")]
    Undecodable(String),
}

fn aad(subject: &str) -> Vec<u8> {
    [AAD_PREFIX, subject.as_bytes()].concat()
}

fn cipher(key: &PersonalKey) -> Aes256GcmSiv {
    Aes256GcmSiv::new_from_slice(key.as_bytes()).expect("a 32-byte key is an AES-256 key")
}

/// What every sealed `PersonalData` is padded to (`PersonalData.padding`): the sealed bytes are then
/// 336 long (with the tag) whatever they hold, so they say nothing of the data's length.
pub const PADDED_BYTES: usize = 320;

/// `data` sealed under `key` for the wallet whose stream is `subject`, padded to [`PADDED_BYTES`].
pub fn seal(key: &PersonalKey, subject: &str, data: &PersonalData) -> SealedPersonalData {
    let unpadded = PersonalData { padding: Vec::new(), ..data.clone() }.encoded_len();
    // The padding field costs a tag byte and a two-byte length (the padding is 128 bytes or more).
    let padding = PADDED_BYTES.checked_sub(unpadded + 3).filter(|p| (128..16_384).contains(p)).expect("personal data fits the padding");
    let plaintext = PersonalData { padding: vec![0; padding], ..data.clone() }.encode_to_vec();
    debug_assert_eq!(plaintext.len(), PADDED_BYTES);
    let ciphertext = cipher(key)
        .encrypt(&Nonce::default(), Payload { msg: &plaintext, aad: &aad(subject) })
        .expect("AES-GCM-SIV seals any message shorter than 2^36 bytes");
    SealedPersonalData { algorithm: ALGORITHM_AES_256_GCM_SIV, ciphertext }
}

/// The personal data `sealed` holds, opened with the key of the wallet whose stream is `subject`.
pub fn open(key: &PersonalKey, subject: &str, sealed: &SealedPersonalData) -> Result<PersonalData, OpenError> {
    if sealed.algorithm != ALGORITHM_AES_256_GCM_SIV {
        return Err(OpenError::UnknownAlgorithm(sealed.algorithm));
    }
    let plaintext =
        cipher(key).decrypt(&Nonce::default(), Payload { msg: &sealed.ciphertext, aad: &aad(subject) }).map_err(|_| OpenError::Forged)?;
    let data = PersonalData::decode(plaintext.as_slice()).map_err(|e| OpenError::Undecodable(e.to_string()))?;
    Ok(PersonalData { padding: Vec::new(), ..data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::REF_BYTES_MAX;

    fn data(customer_ref: &str) -> PersonalData {
        PersonalData { customer_ref: customer_ref.into(), padding: Vec::new() }
    }

    #[test]
    fn sealed_data_opens_under_its_key_and_wallet_only() {
        let (key, other) = (PersonalKey::generate().unwrap(), PersonalKey::generate().unwrap());
        let (wallet, neighbour) = ("t/wallet/a", "t/wallet/b");
        let sealed = seal(&key, wallet, &data("crm-alice"));
        assert!(!sealed.ciphertext.windows(9).any(|w| w == b"crm-alice"), "sealed, not encoded");
        // Padded: the longest reference the API takes seals to as many bytes as the shortest.
        assert_eq!(sealed.ciphertext.len(), PADDED_BYTES + 16);
        assert_eq!(seal(&key, wallet, &data(&"x".repeat(REF_BYTES_MAX))).ciphertext.len(), PADDED_BYTES + 16);
        assert_eq!(seal(&key, wallet, &data("")).ciphertext.len(), PADDED_BYTES + 16);
        assert_eq!(open(&key, wallet, &sealed), Ok(data("crm-alice")));
        assert_eq!(open(&other, wallet, &sealed), Err(OpenError::Forged));
        assert_eq!(open(&key, neighbour, &sealed), Err(OpenError::Forged), "bound to its wallet");
        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert_eq!(open(&key, wallet, &flipped), Err(OpenError::Forged));
        let unknown = SealedPersonalData { algorithm: 2, ..sealed.clone() };
        assert_eq!(open(&key, wallet, &unknown), Err(OpenError::UnknownAlgorithm(2)));
        // Deterministic: a retry seals to the same bytes; other data does not.
        assert_eq!(seal(&key, wallet, &data("crm-alice")), sealed);
        assert_ne!(seal(&key, wallet, &data("crm-alicf")).ciphertext, sealed.ciphertext);
        assert_eq!(format!("{key:?}"), "PersonalKey(..)");
    }

    /// A vector pinned so the algorithm (the nonce, the associated data) never drifts from what
    /// `proto/tally/v1/events.proto` documents. The bytes are what Python's `cryptography` (OpenSSL's
    /// AES-GCM-SIV) gives for the same key, message and associated data.
    #[test]
    fn the_documented_algorithm_is_pinned() {
        use sha2::{Digest, Sha256};
        let key = PersonalKey::from_bytes(&[7; 32]).unwrap();
        let sealed = seal(&key, "shop/wallet/w-1", &data("crm-1"));
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!((sealed.ciphertext.len(), hex(&Sha256::digest(&sealed.ciphertext))), (336, PINNED_SHA256.to_owned()));
    }

    const PINNED_SHA256: &str = "86caf0f468c5c3f8296ca119143219e97158d3f68d54ec5a49944773ba8277d3";
}

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

/// `data` sealed under `key` for the wallet whose stream is `subject`.
pub fn seal(key: &PersonalKey, subject: &str, data: &PersonalData) -> SealedPersonalData {
    let plaintext = data.encode_to_vec();
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
    PersonalData::decode(plaintext.as_slice()).map_err(|e| OpenError::Undecodable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(customer_ref: &str) -> PersonalData {
        PersonalData { customer_ref: customer_ref.into() }
    }

    #[test]
    fn sealed_data_opens_under_its_key_and_wallet_only() {
        let (key, other) = (PersonalKey::generate().unwrap(), PersonalKey::generate().unwrap());
        let (wallet, neighbour) = ("t/wallet/a", "t/wallet/b");
        let sealed = seal(&key, wallet, &data("crm-alice"));
        assert!(!sealed.ciphertext.windows(9).any(|w| w == b"crm-alice"), "sealed, not encoded");
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
        let key = PersonalKey::from_bytes(&[7; 32]).unwrap();
        let sealed = seal(&key, "shop/wallet/w-1", &data("crm-1"));
        let hex: String = sealed.ciphertext.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, PINNED);
    }

    const PINNED: &str = "480fe54a0e0a214c6efe8958fa667197729a6569de1c21";
}

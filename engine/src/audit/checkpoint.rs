//! Signed checkpoints (ADR 0011): the log chain's link at a position, signed with an Ed25519 key kept
//! away from the log. The stored links say *where* a change was made; a checkpoint proves the log up to
//! its position is the one that was signed, even against someone who rewrote the log and recomputed
//! every link after the change — or cut events off its end.
//!
//! What is signed is a short text, so anyone can check a checkpoint with any Ed25519 tool:
//!
//! ```text
//! tally-checkpoint-v1
//! log <log id>
//! position <global position>
//! log_hash <64 hex digits>
//! signed_at <RFC 3339 instant>
//! ```
//!
//! (each line ending in `\n`, UTF-8). The key is a 32-byte Ed25519 seed; only its public half is needed
//! to verify, and it must come from the auditor, not from the checkpoint file.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::store::chain::Hash;

/// The checkpoint format's name, the first line of what is signed.
pub const FORMAT: &str = "tally-checkpoint-v1";

/// A signed checkpoint, as `tally audit checkpoint` writes it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format: String,
    /// The log's identity (stream `$log`); empty for a log that has none.
    pub log_id: String,
    pub position: u64,
    /// The log chain's link at `position`, hex.
    pub log_hash: String,
    pub signed_at: String,
    /// The signer's public key, hex: for information only — verify with a key you hold.
    pub public_key: String,
    /// Ed25519 over [`Checkpoint::message`], hex.
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a {FORMAT} checkpoint (format {0:?})")]
    Format(String),
    #[error("{field} is not valid hex of {bytes} bytes")]
    Hex { field: &'static str, bytes: usize },
    #[error("the checkpoint's signature does not verify with the public key given: it was not signed by that key, or was altered")]
    Signature,
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `N` bytes from `2N` hex digits.
pub fn from_hex<const N: usize>(field: &'static str, text: &str) -> Result<[u8; N], CheckpointError> {
    let text = text.trim();
    let bad = || CheckpointError::Hex { field, bytes: N };
    if text.len() != 2 * N || !text.is_ascii() {
        return Err(bad());
    }
    let mut out = [0; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

impl Checkpoint {
    /// Signs the link `log_hash` at `position` of log `log_id`.
    pub fn sign(key: &SigningKey, log_id: &str, position: u64, log_hash: &Hash, signed_at: &str) -> Self {
        let log_hash = hex(log_hash);
        let signature = key.sign(message(log_id, position, &log_hash, signed_at).as_bytes());
        Self {
            format: FORMAT.into(),
            log_id: log_id.into(),
            position,
            log_hash,
            signed_at: signed_at.into(),
            public_key: hex(key.verifying_key().as_bytes()),
            signature: hex(&signature.to_bytes()),
        }
    }

    /// Checks the signature against `trusted` (the auditor's copy of the public key); answers the signed
    /// link.
    pub fn verify(&self, trusted: &VerifyingKey) -> Result<Hash, CheckpointError> {
        if self.format != FORMAT {
            return Err(CheckpointError::Format(self.format.clone()));
        }
        let log_hash = from_hex::<32>("log_hash", &self.log_hash)?;
        let signature = Signature::from_bytes(&from_hex::<64>("signature", &self.signature)?);
        let message = message(&self.log_id, self.position, &self.log_hash, &self.signed_at);
        trusted.verify(message.as_bytes(), &signature).map_err(|_| CheckpointError::Signature)?;
        Ok(log_hash)
    }

    /// Whether the checkpoint names `key` as its signer (not a proof: see [`Checkpoint::verify`]).
    pub fn names_key(&self, key: &VerifyingKey) -> bool {
        self.public_key.eq_ignore_ascii_case(&hex(key.as_bytes()))
    }
}

/// What is signed.
pub fn message(log_id: &str, position: u64, log_hash_hex: &str, signed_at: &str) -> String {
    format!("{FORMAT}\nlog {log_id}\nposition {position}\nlog_hash {log_hash_hex}\nsigned_at {signed_at}\n")
}

/// A signing key from its 32-byte seed in hex (the key file's content).
pub fn signing_key(seed_hex: &str) -> Result<SigningKey, CheckpointError> {
    Ok(SigningKey::from_bytes(&from_hex::<32>("the key file", seed_hex)?))
}

/// A public key from 64 hex digits.
pub fn verifying_key(hex_text: &str) -> Result<VerifyingKey, CheckpointError> {
    VerifyingKey::from_bytes(&from_hex::<32>("the public key", hex_text)?)
        .map_err(|_| CheckpointError::Hex { field: "the public key", bytes: 32 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_with_its_key_only_and_unaltered() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let checkpoint = Checkpoint::sign(&key, "log-1", 42, &[9; 32], "2026-12-01T00:00:00Z");
        assert_eq!(checkpoint.verify(&key.verifying_key()), Ok([9; 32]));
        assert!(checkpoint.names_key(&key.verifying_key()));
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert_eq!(checkpoint.verify(&other), Err(CheckpointError::Signature));
        for altered in [
            Checkpoint { position: 43, ..checkpoint.clone() },
            Checkpoint { log_hash: hex(&[1; 32]), ..checkpoint.clone() },
            Checkpoint { log_id: "log-2".into(), ..checkpoint.clone() },
            Checkpoint { signed_at: "2027-01-01T00:00:00Z".into(), ..checkpoint.clone() },
        ] {
            assert_eq!(altered.verify(&key.verifying_key()), Err(CheckpointError::Signature), "{altered:?}");
        }
        assert_eq!(
            Checkpoint { signature: "00".into(), ..checkpoint.clone() }.verify(&key.verifying_key()),
            Err(CheckpointError::Hex { field: "signature", bytes: 64 })
        );
        let json = serde_json::to_string(&checkpoint).unwrap();
        assert_eq!(serde_json::from_str::<Checkpoint>(&json).unwrap(), checkpoint);
    }

    #[test]
    fn keys_are_read_from_hex() {
        assert_eq!(from_hex::<2>("x", "0aFf"), Ok([0x0a, 0xff]));
        assert!(from_hex::<2>("x", "0aF").is_err() && from_hex::<2>("x", "zz00").is_err() && from_hex::<2>("x", "é0").is_err());
        let key = signing_key(&"11".repeat(32)).unwrap();
        assert_eq!(verifying_key(&hex(key.verifying_key().as_bytes())).unwrap(), key.verifying_key());
    }
}

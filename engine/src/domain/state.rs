//! The wallet aggregate's state: a fold of its events, nothing more.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};

use crate::FastMap;

/// Serializes a map in key order, so equal states always encode to equal bytes (snapshots compare
/// byte for byte).
fn sorted<S: Serializer, V: Serialize>(map: &FastMap<String, V>, serializer: S) -> Result<S::Ok, S::Error> {
    map.iter().collect::<BTreeMap<_, _>>().serialize(serializer)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WalletStatus {
    /// No `WalletEnrolled` yet: the wallet does not exist.
    #[default]
    NotEnrolled,
    Active,
    Closed,
}

/// What one source (an order) earned in this wallet and how much of it was reversed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SourceLedger {
    pub earned: i64,
    /// Points refunds asked to take back (including any shortfall the policy could not take).
    pub reversed: i64,
}

impl SourceLedger {
    pub fn reversible(&self) -> i64 {
        self.earned - self.reversed
    }
}

/// The recorded outcome of an accepted command, found again by its idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub command_fingerprint: u64,
    /// Stream versions of the first and last event the command produced.
    pub first_version: u64,
    pub last_version: u64,
    /// The balance right after the command.
    pub balance_after: i64,
}

/// Serializable for snapshots (the `tally-snapshots` crate owns the format and its version).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WalletState {
    pub status: WalletStatus,
    pub customer_ref: String,
    /// Available points; may be negative under the ALLOW_NEGATIVE return policy.
    pub balance: i64,
    pub lifetime_earned: i64,
    pub lifetime_redeemed: i64,
    pub lifetime_reversed: i64,
    /// Sum of all adjustments, signed.
    pub lifetime_adjusted: i64,
    pub enrolled_at_ms: i64,
    pub last_activity_ms: i64,
    /// Number of events applied: the stream version this state reflects.
    pub version: u64,
    #[serde(serialize_with = "sorted")]
    pub(crate) sources: FastMap<String, SourceLedger>,
    #[serde(serialize_with = "sorted")]
    pub(crate) receipts: FastMap<String, Receipt>,
}

impl WalletState {
    pub fn source(&self, source_ref: &str) -> Option<&SourceLedger> {
        self.sources.get(source_ref)
    }

    pub fn receipt(&self, idempotency_key: &str) -> Option<&Receipt> {
        self.receipts.get(idempotency_key)
    }

    /// Number of accepted commands remembered for idempotency.
    pub fn receipt_count(&self) -> usize {
        self.receipts.len()
    }
}

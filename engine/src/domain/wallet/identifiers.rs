//! Identifiers from outside Tally a wallet can be found by (`crate::domain::identifiers`): attached and
//! detached by callers, all detached when the wallet closes or its customer is erased. Which wallet holds
//! an identifier is settled on the identifier's own stream by the wallet's actor, around these events.

use tally_proto::v1::{IdentifierAttached, IdentifierDetached};

use crate::domain::event::Change;
use crate::domain::identifiers::{IDENTIFIERS_PER_WALLET_MAX, IdentifierKind};
use crate::domain::rejection::Rejection;
use crate::domain::state::WalletState;

/// An identifier attached, unless the wallet has it, has as many as it may, or its customer was erased
/// (an erased customer's wallet stays usable, found by its id only: attaching a phone number would
/// undo the erasure).
pub(super) fn attach(state: &WalletState, kind: IdentifierKind, lookup: &str) -> Result<Change, Rejection> {
    if state.customer_erased {
        return Err(Rejection::CustomerAlreadyErased);
    }
    if state.identifiers.contains_key(lookup) {
        return Err(Rejection::IdentifierAlreadyAttached);
    }
    if state.identifiers.len() >= IDENTIFIERS_PER_WALLET_MAX {
        return Err(Rejection::TooManyIdentifiers { max: IDENTIFIERS_PER_WALLET_MAX });
    }
    Ok(Change::IdentifierAttached(IdentifierAttached { kind: kind as i32, lookup: lookup.to_owned() }))
}

pub(super) fn detach(state: &WalletState, lookup: &str, reason: &str) -> Result<Change, Rejection> {
    let kind = *state.identifiers.get(lookup).ok_or(Rejection::IdentifierNotAttached)?;
    Ok(Change::IdentifierDetached(IdentifierDetached { kind, lookup: lookup.to_owned(), reason: reason.to_owned() }))
}

/// Every identifier detached, in lookup order (the wallet closes, or its customer is erased).
pub(super) fn detach_all(state: &WalletState, reason: &str) -> Vec<Change> {
    state
        .identifiers
        .iter()
        .map(|(lookup, kind)| {
            Change::IdentifierDetached(IdentifierDetached { kind: *kind, lookup: lookup.clone(), reason: reason.to_owned() })
        })
        .collect()
}

pub(super) fn apply_attached(state: &mut WalletState, e: &IdentifierAttached) {
    state.identifiers.insert(e.lookup.clone(), e.kind);
}

pub(super) fn apply_detached(state: &mut WalletState, e: &IdentifierDetached) {
    state.identifiers.remove(&e.lookup);
}

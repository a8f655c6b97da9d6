//! Customer lookup on the wire (ADR 0015): `WalletService.AttachIdentifier` and `DetachIdentifier` are
//! wallet commands whose value the gateway turns into its lookup hash first (the engine's
//! `IdentifierBook`), so no value reaches an actor or the log; `FindWallet` reads the identifier's claim
//! stream (on any node: the log is shared) and answers the holder's wallet only if it shows the
//! identifier too — as its owner node sees it, on a cluster.

use tally_engine::actors::IdentifierBook;
use tally_engine::domain::identifiers::IdentifierKind;
use tally_engine::domain::{CommandBody, TenantId};
use tally_proto::v1 as pb;
use tonic::{Code, Status};

use crate::status;

/// The identifier a FindWallet asked for, and who claims it.
#[derive(Debug)]
pub(crate) struct Found {
    pub wallet_id: String,
    pub lookup: String,
    /// The claim's log position: the wallet is read as of at least this (it attached after its claim).
    pub position: u64,
}

pub(crate) fn kind(kind: i32) -> Result<IdentifierKind, Status> {
    match IdentifierKind::try_from(kind) {
        Ok(IdentifierKind::Unspecified) | Err(_) => Err(status::invalid("kind", "must be CARD, PHONE, EMAIL or CRM_ID")),
        Ok(kind) => Ok(kind),
    }
}

/// The wallet command of an AttachIdentifier request (the value as its lookup).
pub(crate) async fn attach(book: &IdentifierBook, tenant: &TenantId, r: &pb::AttachIdentifierRequest) -> Result<CommandBody, Status> {
    let kind = kind(r.kind)?;
    let lookup = book.lookup_to_attach(tenant, kind, &r.value).await.map_err(|e| status::from_wallet_error(&e))?;
    Ok(CommandBody::AttachIdentifier { kind, lookup })
}

/// The wallet command of a DetachIdentifier request. A tenant that never attached one has no key: the
/// identifier cannot be this wallet's.
pub(crate) async fn detach(book: &IdentifierBook, tenant: &TenantId, r: pb::DetachIdentifierRequest) -> Result<CommandBody, Status> {
    let kind = kind(r.kind)?;
    match book.lookup(tenant, kind, &r.value).await.map_err(|e| status::from_wallet_error(&e))? {
        Some(lookup) => Ok(CommandBody::DetachIdentifier { kind, lookup, reason: r.reason }),
        None => Err(status::from_rejection(&tally_engine::domain::Rejection::IdentifierNotAttached)),
    }
}

/// Who claims the identifier of a FindWallet request.
pub(crate) async fn holder(book: &IdentifierBook, tenant: &TenantId, r: &pb::FindWalletRequest) -> Result<Found, Status> {
    let kind = kind(r.kind)?;
    let lookup = book.lookup(tenant, kind, &r.value).await.map_err(|e| status::from_wallet_error(&e))?.ok_or_else(not_found)?;
    let holder = book.holder(tenant, &lookup).await.map_err(|e| status::from_wallet_error(&e))?.ok_or_else(not_found)?;
    Ok(Found { wallet_id: holder.wallet_id, lookup, position: holder.claimed_at_position })
}

/// The holder's wallet, if it shows the identifier: a claim no attach followed (a crash between the two)
/// or a release not recorded yet is never answered as a match. A holder that is gone is no match either.
pub(crate) fn shown(found: &Found, wallet: Result<pb::Wallet, Status>) -> Result<pb::Wallet, Status> {
    match wallet {
        Ok(wallet) if wallet.identifiers.iter().any(|i| i.lookup == found.lookup) => Ok(wallet),
        Ok(_) => Err(not_found()),
        Err(status) if status.code() == Code::NotFound => Err(not_found()),
        Err(status) => Err(status),
    }
}

fn not_found() -> Status {
    status::with_reason(Code::NotFound, "IDENTIFIER_NOT_FOUND", "no wallet of this tenant has this identifier".to_owned(), &[])
}

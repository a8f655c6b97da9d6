//! Customer lookup on the wire (ADR 0015): `WalletService.AttachIdentifier` and `DetachIdentifier` are
//! wallet commands whose value the gateway turns into its lookup hash first (the engine's
//! `IdentifierBook`), so no value reaches an actor or the log; `FindWallet` reads the identifier's claim
//! stream (on any node: the log is shared) and answers the holder's wallet only if it shows the
//! identifier too — as its owner node sees it, on a cluster.

use tally_engine::actors::{IdentifierBook, WalletKey};
use tally_engine::domain::identifiers::IdentifierKind;
use tally_engine::domain::{CommandBody, TenantId};
use tally_proto::v1 as pb;
use tonic::{Code, Status};
use tonic_types::StatusExt;

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
        Ok(IdentifierKind::Unspecified) | Err(_) => Err(status::invalid("kind", "must be CARD, PHONE, EMAIL, CRM_ID or REFERRAL_CODE")),
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

/// The wallet holding referral code `code` of `key`'s tenant, for `key`'s enrolment: never `key` itself.
/// (Its claim, not its wallet's view of it, is what names the referrer: the claim is only ever made by a
/// wallet asking for that code.)
pub(crate) async fn referrer(book: &IdentifierBook, key: &WalletKey, code: &str) -> Result<String, Status> {
    let lookup = book
        .lookup(&key.tenant, IdentifierKind::ReferralCode, code)
        .await
        .map_err(|e| renamed(status::from_wallet_error(&e), "referral_code"))?;
    let holder = match lookup {
        Some(lookup) => book.holder(&key.tenant, &lookup).await.map_err(|e| status::from_wallet_error(&e))?,
        None => None,
    };
    let holder = holder.ok_or_else(|| {
        status::with_reason(Code::NotFound, "REFERRAL_CODE_NOT_FOUND", "no wallet of this tenant has this referral code".to_owned(), &[])
    })?;
    if holder.wallet_id == key.wallet.as_str() {
        return Err(status::invalid("referral_code", "is this wallet's own: a customer cannot refer themselves"));
    }
    Ok(holder.wallet_id)
}

/// An INVALID_ARGUMENT about an identifier's `value` as one about `field` (the request's own name for it).
fn renamed(status: Status, field: &str) -> Status {
    match status.get_details_bad_request().and_then(|b| b.field_violations.into_iter().next()) {
        Some(violation) if status.code() == Code::InvalidArgument => status::invalid(field, &violation.description),
        _ => status,
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

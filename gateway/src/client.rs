//! `tally wallet ...`: a gRPC client for a person at a terminal, with readable text or `--json`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::cli::{Key, Target, WalletCommand};
use crate::credentials::{self, Authed, CredentialError};
use serde::Serialize;
use tally_proto::v1::wallet_service_client::WalletServiceClient;
use tally_proto::v1::{
    AdjustRequest, AttachIdentifierRequest, CloseRequest, DetachIdentifierRequest, EarnRequest, EnrollRequest, EraseCustomerRequest,
    FindWalletRequest, GetWalletRequest, ListTransactionsRequest, Money, RedeemRequest, ReverseRequest, Transaction, TransactionKind,
    TransferPointsRequest, Wallet, WalletMutation, WalletStatus,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {server}: {source}")]
    Connect { server: String, source: tonic::transport::Error },
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// Work done on the log directly (`--store`) that failed.
    #[error("{0}")]
    Direct(String),
    #[error("{}: {}", crate::telemetry::code_name(.0.code()), .0.message())]
    Call(tonic::Status),
    /// A change that may or may not have been applied: sending it again with the same key is safe.
    #[error("{}: {} (idempotency key {key}; to try again: --key {key})", crate::telemetry::code_name(.status.code()), .status.message())]
    Change { status: tonic::Status, key: String },
    #[error("cannot reach {server}: {source} (nothing was sent; idempotency key {key})")]
    ChangeNotSent { server: String, source: tonic::transport::Error, key: String },
}

/// Attempts at a change that meets UNAVAILABLE or ABORTED (or no server), with the same key each time.
const CHANGE_ATTEMPTS: u32 = 5;

/// Sends a change, retrying UNAVAILABLE and ABORTED (and a server that cannot be reached) with the same
/// idempotency key: a retry is answered with the first outcome, so a change never applies twice.
async fn change<T, F, Fut>(target: &Target, key: &str, call: F) -> Result<T, ClientError>
where
    F: Fn(WalletServiceClient<Authed>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut schedule = exponential_backoff::Backoff::new(CHANGE_ATTEMPTS, Duration::from_millis(200), Duration::from_secs(3));
    schedule.set_jitter(0.0);
    let mut waits = schedule.into_iter();
    let bearer = target.key.bearer_for(&target.server)?;
    loop {
        let error = match credentials::connect(&target.server, bearer.clone()).await {
            Err(source) => ClientError::ChangeNotSent { server: target.server.clone(), source, key: key.to_owned() },
            Ok(channel) => match call(WalletServiceClient::new(channel)).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) => ClientError::Change { status, key: key.to_owned() },
            },
        };
        let retryable = match &error {
            ClientError::Change { status, .. } => matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Aborted),
            _ => true,
        };
        match waits.next().flatten() {
            Some(wait) if retryable => {
                eprintln!("{error}; retrying in {wait:?} with the same key");
                tokio::time::sleep(wait).await;
            }
            _ => return Err(error),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct WalletView {
    tenant_id: String,
    wallet_id: String,
    status: &'static str,
    customer_ref: String,
    customer_erased: bool,
    balance: i64,
    held_points: i64,
    pending_points: i64,
    available_points: i64,
    lifetime_earned: i64,
    lifetime_purchased: i64,
    lifetime_redeemed: i64,
    lifetime_reversed: i64,
    lifetime_adjusted: i64,
    lifetime_expired: i64,
    upcoming_expiries: Vec<ExpiryView>,
    tier: Option<TierView>,
    stamp_cards: Vec<StampCardView>,
    /// The kinds of identifier the wallet can be found by (their values are kept nowhere).
    identifiers: Vec<&'static str>,
    enrolled_at: Option<String>,
    last_activity_at: Option<String>,
    version: u64,
}

#[derive(Debug, Serialize)]
struct TierView {
    tier_id: String,
    name: String,
    qualifying_points: i64,
    next_review_at: Option<String>,
}

#[derive(Debug, Serialize)]
struct StampCardView {
    card_id: String,
    stamps: i64,
    stamps_required: i64,
    completed: i64,
}

#[derive(Debug, Serialize)]
struct ExpiryView {
    expires_at: Option<String>,
    points: i64,
}

#[derive(Debug, Serialize)]
pub(crate) struct TransactionView {
    version: u64,
    position: u64,
    recorded_at: Option<String>,
    kind: &'static str,
    points: i64,
    reason: String,
    reference: String,
    idempotency_key: String,
    shortfall_points: i64,
    order_amount: Option<MoneyView>,
    /// For credits: when the lot they opened expires.
    expires_at: Option<String>,
}

#[derive(Debug, Serialize)]
struct MoneyView {
    amount_minor: i64,
    currency: String,
}

#[derive(Debug, Serialize)]
struct MutationView {
    idempotency_key: String,
    replayed: bool,
    balance: i64,
    version: u64,
    position: u64,
    transactions: Vec<TransactionView>,
    wallet: Option<WalletView>,
}

#[derive(Debug, Serialize)]
struct HistoryView {
    transactions: Vec<TransactionView>,
    next_page_token: String,
}

fn status_name(status: i32) -> &'static str {
    match WalletStatus::try_from(status) {
        Ok(WalletStatus::Active) => "active",
        Ok(WalletStatus::Closed) => "closed",
        _ => "unknown",
    }
}

fn kind_name(kind: i32) -> &'static str {
    match TransactionKind::try_from(kind) {
        Ok(TransactionKind::Enrolled) => "enrolled",
        Ok(TransactionKind::Earned) => "earned",
        Ok(TransactionKind::Redeemed) => "redeemed",
        Ok(TransactionKind::Adjusted) => "adjusted",
        Ok(TransactionKind::Reversed) => "reversed",
        Ok(TransactionKind::Closed) => "closed",
        Ok(TransactionKind::Held) => "held",
        Ok(TransactionKind::Captured) => "captured",
        Ok(TransactionKind::Released) => "released",
        Ok(TransactionKind::Purchased) => "purchased",
        Ok(TransactionKind::Expired) => "expired",
        Ok(TransactionKind::Matured) => "matured",
        Ok(TransactionKind::TierChanged) => "tier",
        Ok(TransactionKind::TierReviewed) => "tier kept",
        Ok(TransactionKind::Stamped) => "stamped",
        Ok(TransactionKind::CardCompleted) => "card full",
        Ok(TransactionKind::ExpiringSoon) => "expiring",
        Ok(TransactionKind::CustomerErased) => "customer erased",
        Ok(TransactionKind::RewardRefused) => "reward refused",
        Ok(TransactionKind::RedemptionCancelled) => "redemption cancelled",
        Ok(TransactionKind::TransferSent) => "transfer sent",
        Ok(TransactionKind::TransferReceived) => "transfer received",
        Ok(TransactionKind::TransferReturned) => "transfer returned",
        Ok(TransactionKind::TransferRefused) => "transfer refused",
        Ok(TransactionKind::IdentifierAttached) => "identifier attached",
        Ok(TransactionKind::IdentifierDetached) => "identifier detached",
        Ok(TransactionKind::ReferralRecorded) => "referred",
        Ok(TransactionKind::ReferralConverted) => "referral bonus",
        Ok(TransactionKind::ReferralRewarded) => "referral reward",
        Ok(TransactionKind::ReferralLapsed) => "referral lapsed",
        _ => "unknown",
    }
}

pub(crate) fn wallet_view(w: Wallet) -> WalletView {
    WalletView {
        tenant_id: w.tenant_id,
        wallet_id: w.wallet_id,
        status: status_name(w.status),
        customer_ref: w.customer_ref,
        customer_erased: w.customer_erased,
        balance: w.balance,
        held_points: w.held_points,
        pending_points: w.pending_points,
        available_points: w.available_points,
        lifetime_earned: w.lifetime_earned,
        lifetime_purchased: w.lifetime_purchased,
        lifetime_redeemed: w.lifetime_redeemed,
        lifetime_reversed: w.lifetime_reversed,
        lifetime_adjusted: w.lifetime_adjusted,
        lifetime_expired: w.lifetime_expired,
        upcoming_expiries: w
            .upcoming_expiries
            .into_iter()
            .map(|e| ExpiryView { expires_at: e.expires_at.map(|t| t.to_string()), points: e.points })
            .collect(),
        identifiers: w.identifiers.iter().map(|i| tally_engine::domain::identifiers::kind_name(i.kind)).collect(),
        tier: w.tier.map(|t| TierView {
            tier_id: t.tier_id,
            name: t.name,
            qualifying_points: t.qualifying_points,
            next_review_at: t.next_review_at.map(|t| t.to_string()),
        }),
        stamp_cards: w
            .stamp_cards
            .into_iter()
            .map(|c| StampCardView { card_id: c.card_id, stamps: c.stamps, stamps_required: c.stamps_required, completed: c.completed })
            .collect(),
        enrolled_at: w.enrolled_at.map(|t| t.to_string()),
        last_activity_at: w.last_activity_at.map(|t| t.to_string()),
        version: w.version,
    }
}

pub(crate) fn transaction_view(t: Transaction) -> TransactionView {
    TransactionView {
        version: t.version,
        position: t.position,
        recorded_at: t.recorded_at.map(|t| t.to_string()),
        kind: kind_name(t.kind),
        points: t.points,
        reason: t.reason,
        reference: t.reference,
        idempotency_key: t.idempotency_key,
        shortfall_points: t.shortfall_points,
        order_amount: t.order_amount.map(|m| MoneyView { amount_minor: m.amount_minor, currency: m.currency }),
        expires_at: t.expires_at.map(|t| t.to_string()),
    }
}

pub(crate) fn render_wallet(w: &WalletView) -> String {
    let mut out = format!(
        "{}/{} ({}, customer {})\n  balance   {}\n  held      {}\n  pending   {}\n  available {}\n  earned    {}\n  purchased {}\n  redeemed  {}\n  reversed  {}\n  adjusted  {}\n  expired   {}\n  enrolled  {}\n  last move {}\n  version   {}",
        w.tenant_id,
        w.wallet_id,
        w.status,
        if w.customer_erased { "erased".to_owned() } else { format!("{:?}", w.customer_ref) },
        w.balance,
        w.held_points,
        w.pending_points,
        w.available_points,
        w.lifetime_earned,
        w.lifetime_purchased,
        w.lifetime_redeemed,
        w.lifetime_reversed,
        w.lifetime_adjusted,
        w.lifetime_expired,
        w.enrolled_at.as_deref().unwrap_or("-"),
        w.last_activity_at.as_deref().unwrap_or("-"),
        w.version
    );
    for expiry in &w.upcoming_expiries {
        let _ = write!(out, "\n  expiring  {} on {}", expiry.points, expiry.expires_at.as_deref().unwrap_or("-"));
    }
    if let Some(tier) = &w.tier {
        let tier_name = if tier.tier_id.is_empty() { "below the first tier" } else { tier.name.as_str() };
        let _ = write!(out, "\n  tier      {tier_name} ({} qualifying points)", tier.qualifying_points);
    }
    for card in &w.stamp_cards {
        let _ =
            write!(out, "\n  card      {}: {} of {} stamps, {} completed", card.card_id, card.stamps, card.stamps_required, card.completed);
    }
    if !w.identifiers.is_empty() {
        let _ = write!(out, "\n  found by  {}", w.identifiers.join(", "));
    }
    out
}

pub(crate) fn render_transaction(t: &TransactionView) -> String {
    let mut line =
        format!("v{:<5} {:<24} {:<9} {:>+8}  {}", t.version, t.recorded_at.as_deref().unwrap_or("-"), t.kind, t.points, t.reference);
    if !t.reason.is_empty() {
        let _ = write!(line, "  ({})", t.reason);
    }
    if t.shortfall_points != 0 {
        let _ = write!(line, "  shortfall {}", t.shortfall_points);
    }
    if let Some(at) = &t.expires_at {
        let _ = write!(line, "  expires {at}");
    }
    line
}

fn render_mutation(m: &MutationView) -> String {
    let what: Vec<String> = m.transactions.iter().map(|t| format!("{} {:+}", t.kind, t.points)).collect();
    let mut out =
        format!("{} -> balance {} (version {}, position {}, key {})", what.join(", "), m.balance, m.version, m.position, m.idempotency_key);
    if m.replayed {
        out.push_str("\nalready done with this key: nothing changed, this is the first outcome");
    }
    out
}

pub(crate) fn output<T: Serialize>(json: bool, value: &T, text: impl FnOnce(&T) -> String) -> String {
    if json { serde_json::to_string_pretty(value).expect("views serialize") } else { text(value) }
}

async fn connect(target: &Target) -> Result<WalletServiceClient<Authed>, ClientError> {
    credentials::connect(&target.server, target.key.bearer_for(&target.server)?)
        .await
        .map(WalletServiceClient::new)
        .map_err(|source| ClientError::Connect { server: target.server.clone(), source })
}

/// The change's idempotency key; one made up here is printed before the change is sent, so a person
/// can send it again with the same key whatever happens.
fn key(key: Key) -> String {
    key.key.unwrap_or_else(|| {
        let key = uuid::Uuid::new_v4().to_string();
        eprintln!("idempotency key {key}");
        key
    })
}

fn mutation_output(json: bool, key: String, m: WalletMutation) -> String {
    let view = MutationView {
        idempotency_key: key,
        replayed: m.replayed,
        balance: m.balance,
        version: m.version,
        position: m.position,
        transactions: m.transactions.into_iter().map(transaction_view).collect(),
        wallet: m.wallet.map(wallet_view),
    };
    output(json, &view, render_mutation)
}

/// Runs one `tally wallet` subcommand; returns what to print.
/// Sends a change with `send` (retried as [`change`] retries) and renders its answer.
async fn mutation<R, F, Fut>(target: &Target, key: String, request: R, send: F) -> Result<String, ClientError>
where
    R: Clone,
    F: Fn(WalletServiceClient<Authed>, R) -> Fut,
    Fut: Future<Output = Result<tonic::Response<WalletMutation>, tonic::Status>>,
{
    let reply = change(target, &key, |client| send(client, request.clone())).await?;
    Ok(mutation_output(target.json, key, reply))
}

/// `tally wallet enroll`.
async fn enroll(command: WalletCommand) -> Result<String, ClientError> {
    let WalletCommand::Enroll { wallet, key: k, customer, referral_code, target } = command else {
        unreachable!("called for `tally wallet enroll` only")
    };
    let key = key(k);
    let request = EnrollRequest {
        tenant_id: wallet.tenant,
        wallet_id: wallet.wallet,
        idempotency_key: key.clone(),
        customer_ref: customer,
        referral_code,
    };
    mutation(&target, key, request, |mut client, request| async move { client.enroll(request).await }).await
}

/// `tally wallet attach-identifier | detach-identifier | find`.
async fn identifiers(command: WalletCommand) -> Result<String, ClientError> {
    match command {
        WalletCommand::AttachIdentifier { wallet, key: k, identifier, target } => {
            let key = key(k);
            let request = AttachIdentifierRequest {
                tenant_id: wallet.tenant,
                wallet_id: wallet.wallet,
                kind: identifier.kind.wire(),
                value: identifier.value,
                idempotency_key: key.clone(),
            };
            mutation(&target, key, request, |mut client, request| async move { client.attach_identifier(request).await }).await
        }
        WalletCommand::DetachIdentifier { wallet, key: k, identifier, reason, target } => {
            let key = key(k);
            let request = DetachIdentifierRequest {
                tenant_id: wallet.tenant,
                wallet_id: wallet.wallet,
                kind: identifier.kind.wire(),
                value: identifier.value,
                idempotency_key: key.clone(),
                reason,
            };
            mutation(&target, key, request, |mut client, request| async move { client.detach_identifier(request).await }).await
        }
        WalletCommand::Find { tenant, identifier, target } => {
            let request = FindWalletRequest { tenant_id: tenant, kind: identifier.kind.wire(), value: identifier.value };
            let reply = connect(&target).await?.find_wallet(request).await.map_err(ClientError::Call)?;
            Ok(output(target.json, &wallet_view(reply.into_inner()), render_wallet))
        }
        _ => unreachable!("called for the identifier commands only"),
    }
}

/// `tally wallet transfer`: the key is the transfer id; a staff member named is sent as `x-staff-id`.
async fn transfer(command: WalletCommand) -> Result<String, ClientError> {
    let WalletCommand::Transfer { wallet, key: k, to, points, reason, staff, target } = command else {
        unreachable!("called for `tally wallet transfer` only")
    };
    let staff: Option<tonic::metadata::AsciiMetadataValue> =
        staff.map(|s| s.parse()).transpose().map_err(|_| ClientError::Direct("--staff: must be printable ASCII".into()))?;
    let key = key(k);
    let request = TransferPointsRequest {
        tenant_id: wallet.tenant,
        wallet_id: wallet.wallet,
        to_wallet_id: to,
        points,
        transfer_id: key.clone(),
        reason,
    };
    let sent = change(&target, &key, |mut client| {
        let mut request = tonic::Request::new(request.clone());
        if let Some(staff) = &staff {
            request.metadata_mut().insert("x-staff-id", staff.clone());
        }
        async move { client.transfer_points(request).await }
    })
    .await?;
    if target.json {
        let view = serde_json::json!({ "transfer_id": sent.transfer_id, "to_wallet_id": sent.to_wallet_id, "points": sent.points,
            "balance": sent.balance, "replayed": sent.replayed, "position": sent.position });
        return Ok(serde_json::to_string_pretty(&view).expect("a view serializes"));
    }
    let again = if sent.replayed { " (answered before: nothing new)" } else { "" };
    Ok(format!("sent {} points to {}; balance {}{again}", sent.points, sent.to_wallet_id, sent.balance))
}

pub async fn run(command: WalletCommand) -> Result<String, ClientError> {
    match command {
        command @ WalletCommand::Enroll { .. } => enroll(command).await,
        WalletCommand::Earn { wallet, key: k, points, source, reason, amount_minor, currency, target } => {
            let key = key(k);
            let order_amount = amount_minor.zip(currency).map(|(amount_minor, currency)| Money { amount_minor, currency });
            let request = EarnRequest {
                tenant_id: wallet.tenant,
                wallet_id: wallet.wallet,
                idempotency_key: key.clone(),
                points,
                reason,
                source_ref: source.unwrap_or_else(|| key.clone()),
                order_amount,
            };
            mutation(&target, key, request, |mut client, request| async move { client.earn(request).await }).await
        }
        WalletCommand::Redeem { wallet, key: k, points, reward, target } => {
            let key = key(k);
            let request = RedeemRequest {
                tenant_id: wallet.tenant,
                wallet_id: wallet.wallet,
                idempotency_key: key.clone(),
                points,
                reward_ref: reward,
            };
            mutation(&target, key, request, |mut client, request| async move { client.redeem(request).await }).await
        }
        WalletCommand::Adjust { wallet, key: k, points, reason, staff, target } => {
            let key = key(k);
            let request = AdjustRequest {
                tenant_id: wallet.tenant,
                wallet_id: wallet.wallet,
                idempotency_key: key.clone(),
                points,
                reason,
                staff_ref: staff,
            };
            mutation(&target, key, request, |mut client, request| async move { client.adjust(request).await }).await
        }
        WalletCommand::Reverse { wallet, key: k, source, points, reason, target } => {
            let key = key(k);
            let request = ReverseRequest {
                tenant_id: wallet.tenant,
                wallet_id: wallet.wallet,
                idempotency_key: key.clone(),
                source_ref: source,
                points,
                reason,
            };
            mutation(&target, key, request, |mut client, request| async move { client.reverse(request).await }).await
        }
        WalletCommand::EraseCustomer { wallet, key: k, reason, target } => {
            let key = key(k);
            let request = EraseCustomerRequest { tenant_id: wallet.tenant, wallet_id: wallet.wallet, idempotency_key: key.clone(), reason };
            mutation(&target, key, request, |mut client, request| async move { client.erase_customer(request).await }).await
        }
        WalletCommand::Close { wallet, key: k, reason, target } => {
            let key = key(k);
            let request = CloseRequest { tenant_id: wallet.tenant, wallet_id: wallet.wallet, idempotency_key: key.clone(), reason };
            mutation(&target, key, request, |mut client, request| async move { client.close(request).await }).await
        }
        transfer_command @ WalletCommand::Transfer { .. } => transfer(transfer_command).await,
        command @ (WalletCommand::AttachIdentifier { .. } | WalletCommand::DetachIdentifier { .. } | WalletCommand::Find { .. }) => {
            identifiers(command).await
        }
        WalletCommand::Show { wallet, target } => {
            let request = GetWalletRequest { tenant_id: wallet.tenant, wallet_id: wallet.wallet, ..Default::default() };
            let reply = connect(&target).await?.get_wallet(request).await.map_err(ClientError::Call)?;
            Ok(output(target.json, &wallet_view(reply.into_inner()), render_wallet))
        }
        WalletCommand::History { wallet, page_size, page_token, target } => {
            let request = ListTransactionsRequest { tenant_id: wallet.tenant, wallet_id: wallet.wallet, page_size, page_token };
            history(&target, request).await
        }
    }
}

/// A page of a wallet's history, rendered.
async fn history(target: &Target, request: ListTransactionsRequest) -> Result<String, ClientError> {
    let reply = connect(target).await?.list_transactions(request).await.map_err(ClientError::Call)?.into_inner();
    let view = HistoryView {
        transactions: reply.transactions.into_iter().map(transaction_view).collect(),
        next_page_token: reply.next_page_token,
    };
    Ok(output(target.json, &view, |v| {
        let mut text: Vec<String> = v.transactions.iter().map(render_transaction).collect();
        if !v.next_page_token.is_empty() {
            text.push(format!("more: --page-token {}", v.next_page_token));
        }
        text.join("\n")
    }))
}
